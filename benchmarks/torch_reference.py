"""The reference a PyTorch user would write: nn.Sequential, autograd, SGD with momentum.

Eager, or with ``compiled=True`` as the torch.compile tutorial does it: the model
compiled (forward, and the backward through AOTAutograd) and the optimizer step
compiled on its own. Same network, loss and batches as xpmlp. torch.optim.SGD's
momentum form (v ← μv + g; p ← p − ηv) is xpmlp's update up to the scaling of v.
"""

from __future__ import annotations

import numpy as np
import torch


class TorchMLP:
    def __init__(self, weights, biases, num_bn, lr, momentum, dtype, device, compiled=False):
        self.torch_dtype = getattr(torch, dtype)
        layers = []
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            linear = torch.nn.Linear(*w.shape, dtype=self.torch_dtype)  # float32 here would round the weights
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                linear.bias.copy_(torch.from_numpy(b.ravel()))
            layers.append(linear)
            if i < num_bn:
                layers.append(torch.nn.BatchNorm1d(w.shape[1], eps=1e-8, momentum=0.1))
            if i < len(weights) - 1:
                layers.append(torch.nn.Sigmoid())
        self.device = torch.device(device)
        self.model = torch.nn.Sequential(*layers).to(self.device, self.torch_dtype)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.loss = torch.nn.CrossEntropyLoss(reduction="sum")
        self.forward, self.optimizer_step = self.model, self.optimizer.step
        if compiled:
            self.forward, self.optimizer_step = torch.compile(self.model), torch.compile(self.optimizer.step)

    def to_device(self, array):
        return torch.from_numpy(array).to(self.device)

    def epoch(self, x, labels, order, batch_size):
        """One epoch on device tensors; returns (sum of losses, errors) as device tensors."""
        loss_sum = torch.zeros((), device=self.device, dtype=self.torch_dtype)
        errors = torch.zeros((), device=self.device, dtype=torch.int64)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], labels[idx]
            out = self.forward(xb)
            loss = self.loss(out, yb)
            self.optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            self.optimizer_step()
            loss_sum += loss.detach()
            errors += (out.detach().argmax(dim=1) != yb).sum()
        return loss_sum, errors

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
