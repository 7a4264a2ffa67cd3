"""The reference a PyTorch user would write: nn.Sequential, autograd, SGD with momentum.

Three ways to run the same steps (:meth:`TorchMLP.train_batches`):

- ``eager``: one Python call per operation;
- ``compile``: as the torch.compile tutorial does it, the model compiled (forward, and the backward
  through AOTAutograd) and the optimizer step compiled on its own;
- ``cuda-graph``: the whole epoch captured once into one ``torch.cuda.CUDAGraph`` and replayed every
  epoch, as PyTorch's CUDA-graph guide does it for a whole network (warm-up on a side stream, then
  capture of forward, backward and ``optimizer.step``). Each replay reads its batches from one device
  buffer of row indices, refilled before the launch.

Same network, loss and batches as xpmlp. torch.optim.SGD's momentum form (v ← μv + g; p ← p − ηv) is
xpmlp's update up to the scaling of v.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

MODES = ("eager", "compile", "cuda-graph")
WARM_UP_STEPS = 3  # before a capture: momentum buffers, cuBLAS workspaces and the allocator's pools exist


class TorchMLP:
    def __init__(self, weights, biases, num_bn, lr, momentum, dtype, device, mode="eager"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.device = torch.device(device)
        if mode == "cuda-graph" and self.device.type != "cuda":
            raise ValueError(f"mode 'cuda-graph' needs a CUDA device, got {device!r}")
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
        self.model = torch.nn.Sequential(*layers).to(self.device, self.torch_dtype)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.loss = torch.nn.CrossEntropyLoss(reduction="sum")
        self.mode = mode
        self.forward, self.optimizer_step = self.model, self.optimizer.step
        if mode == "compile":
            self.forward, self.optimizer_step = torch.compile(self.model), torch.compile(self.optimizer.step)
        self._graph: torch.cuda.CUDAGraph | None = None

    def to_device(self, array):
        return torch.from_numpy(array).to(self.device)

    def train_batches(self, x, labels, order, batch_size, loss_sum, errors) -> None:
        """One step per batch of ``order``, adding the losses and errors into ``loss_sum`` and ``errors`` in place.

        What the eager and compiled epochs run, and what the CUDA graph captures: no host reads.
        """
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

    def sums(self):
        """Zeroed device accumulators (loss, errors)."""
        return (
            torch.zeros((), device=self.device, dtype=self.torch_dtype),
            torch.zeros((), device=self.device, dtype=torch.int64),
        )

    def epoch(self, x, labels, order, batch_size):
        """One epoch on device tensors; returns (sum of losses, errors) as device tensors."""
        if self.mode == "cuda-graph":
            return self._replay(x, labels, order, batch_size)
        loss_sum, errors = self.sums()
        self.train_batches(x, labels, order, batch_size, loss_sum, errors)
        return loss_sum, errors

    def _state(self) -> list[torch.Tensor]:
        """Everything a training step changes: parameters, BatchNorm buffers, momentum buffers."""
        momentum = [s["momentum_buffer"] for s in self.optimizer.state.values() if "momentum_buffer" in s]
        return [*self.model.parameters(), *self.model.buffers(), *momentum]

    def warm_up(self, x, labels, order, batch_size) -> None:
        """A few real steps, then every state restored in place: the momentum buffers now exist (zeroed,
        which SGD's first step treats as it treats none), so the captured step is the one replayed."""
        saved = [t.detach().clone() for t in self._state()]  # before: no momentum buffers yet
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            self.train_batches(x, labels, order[: WARM_UP_STEPS * batch_size], batch_size, *self.sums())
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        state = self._state()
        with torch.no_grad():
            for tensor, before in zip(state, saved, strict=False):
                tensor.copy_(before)
            for buffer in state[len(saved) :]:
                buffer.zero_()

    def _replay(self, x, labels, order, batch_size):
        if self._graph is None:
            self._inputs = (x, labels, order.shape, batch_size)
            self._order, (self._loss_sum, self._errors) = order.clone(), self.sums()
            self.warm_up(x, labels, self._order, batch_size)
            self.optimizer.zero_grad(set_to_none=True)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._loss_sum.zero_()
                self._errors.zero_()
                self.train_batches(x, labels, self._order, batch_size, self._loss_sum, self._errors)
        captured_x, captured_labels, shape, size = self._inputs
        if x is not captured_x or labels is not captured_labels or order.shape != shape or batch_size != size:
            raise ValueError("a captured epoch replays on the tensors and batch size it was captured with")
        self._order.copy_(order)
        self._graph.replay()
        return self._loss_sum, self._errors

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
