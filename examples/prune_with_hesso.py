"""Structured pruning with HESSO in a plain PyTorch loop (scikit-learn digits, a small CNN).

    python examples/prune_with_hesso.py

Any nn.Module works the same way; the three trainlab lines are marked.
"""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from trainlab.tasks.models import SmallCNN
from trainlab.techniques.pruning.accounting import compare
from trainlab.techniques.pruning.space import PruningSpace

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target)
x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]

model = SmallCNN((1, 8, 8), 10, channels=(32, 64))
space = PruningSpace(model, x_train[:2], verbose=True)                        # 1. groups
epochs, batch = 8, 64
steps = epochs * (len(x_train) // batch)
opt = space.hesso(lr=0.05, target_group_sparsity=0.5, variant="sgd", momentum=0.9, weight_decay=5e-4,
                  warmup_steps=steps // 10, pruning_steps=steps // 4, pruning_periods=5)  # 2. optimizer

for epoch in range(epochs):
    model.train()
    order = torch.randperm(len(x_train))
    for i in range(0, len(order) - batch + 1, batch):
        idx = order[i:i + batch]
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"epoch {epoch + 1}: test acc {acc:.3f}, group sparsity {space.group_sparsity():.2f}")

small = space.construct_subnet().eval()                                        # 3. smaller network
print(f"subnet test acc {(small(x_test).argmax(1) == y_test).float().mean().item():.3f}")
report = compare(model, small, x_test[:64])
print(f"params {report['params_full']:,} -> {report['params_subnet']:,}, FLOPs ratio {report['flops_ratio']:.2f}, "
      f"CPU latency ratio {report['latency_ratio']:.2f}")

# save the removed group ids with the weights; to reload, rebuild the same subnet from a fresh model
torch.save({"removed": space.zero_groups(), "state_dict": small.state_dict()}, "/tmp/digits_subnet.pt")
saved = torch.load("/tmp/digits_subnet.pt", weights_only=True)
fresh = PruningSpace(SmallCNN((1, 8, 8), 10, channels=(32, 64)), x_train[:2])
reloaded = fresh.construct_subnet(saved["removed"], verify=False)
reloaded.load_state_dict(saved["state_dict"])
print(f"reloaded subnet test acc {(reloaded.eval()(x_test).argmax(1) == y_test).float().mean().item():.3f}")
