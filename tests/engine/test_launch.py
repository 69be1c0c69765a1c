"""Tests for engine/launch.py and utils/comm.py: spawned gloo processes, torchrun environment,
and DDP training that keeps the ranks' weights identical (CPU)."""

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from engine.checkpoint import Checkpointer
from engine.launch import create_ddp_model, launch
from engine.train_loop import SimpleTrainer
from utils import comm

NUM_PROCS = 2
DDP_ITERS = 3
NUM_SAMPLES = 8
FEATURES = 3
# With CUDA, launch() uses NCCL and one GPU per process; these toy runs are CPU tensors (gloo).
cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="spawned toy runs use CPU tensors, which need gloo"
)


class LinearRegression(nn.Module):
    """Toy model with the trainer contract: a dict of ``loss_*`` scalars."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, 1)

    def forward(self, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs, targets = batch
        return {"loss_mse": (self.linear(inputs) - targets).pow(2).mean()}


def _all_reduce_worker(output_dir: str) -> None:
    """Each rank sums (rank + 1) over the group and records what it sees."""
    value = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(value)
    record = {
        "rank": comm.get_rank(),
        "local_rank": comm.get_local_rank(),
        "world_size": comm.get_world_size(),
        "sum": value.item(),
        "gathered": comm.all_gather(comm.get_rank()),
        "reduced": comm.reduce_dict({"x": torch.tensor(float(comm.get_rank()))})["x"].item(),
        "backend": dist.get_backend(),
    }
    comm.synchronize()
    Path(output_dir, f"rank{comm.get_rank()}.json").write_text(json.dumps(record))


def _ddp_train_worker(output_dir: str) -> None:
    """Train a DDP toy model from rank-dependent init on rank-dependent data shards."""
    rank = comm.get_rank()
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = create_ddp_model(LinearRegression(), broadcast_buffers=False)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(NUM_SAMPLES, FEATURES, generator=generator)
    dataset = TensorDataset(inputs, inputs.sum(dim=1, keepdim=True))
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    trainer = SimpleTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.train(0, DDP_ITERS)
    torch.save(model.module.state_dict(), Path(output_dir, f"weights{rank}.pt"))
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    Path(output_dir, f"losses{rank}.json").write_text(json.dumps(losses))
    Checkpointer(model, str(Path(output_dir, "checkpoints"))).save("model")


@pytest.mark.slow
@cpu_only
def test_launch_two_cpu_processes(tmp_path: Path) -> None:
    launch(_all_reduce_worker, NUM_PROCS, args=(str(tmp_path),))
    for rank in range(NUM_PROCS):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record == {
            "rank": rank,
            "local_rank": rank,
            "world_size": NUM_PROCS,
            "sum": 3.0,
            "gathered": [0, 1],
            "reduced": 0.5,
            "backend": "gloo",
        }


@pytest.mark.slow
@cpu_only
def test_ddp_training_keeps_ranks_identical(tmp_path: Path) -> None:
    launch(_ddp_train_worker, NUM_PROCS, args=(str(tmp_path),))
    weights = [torch.load(tmp_path / f"weights{rank}.pt") for rank in range(NUM_PROCS)]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    losses = [json.loads((tmp_path / f"losses{rank}.json").read_text()) for rank in range(2)]
    assert len(losses[0]) == DDP_ITERS and losses[0] == losses[1]  # logged means agree
    # Only rank 0 saved; the DDP wrapper is unwrapped in the saved keys.
    checkpoint = torch.load(tmp_path / "checkpoints" / "model.pth", weights_only=True)
    assert set(checkpoint["model"]) == {"linear.weight", "linear.bias"}
    assert torch.equal(checkpoint["model"]["linear.weight"], weights[0]["linear.weight"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_launch_under_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    seen = []

    def main(tag: str) -> None:
        seen.append((tag, dist.is_initialized(), comm.get_world_size(), comm.get_local_rank()))

    launch(main, num_gpus_per_machine=4, args=("torchrun",))  # the env wins over the arguments
    assert seen == [("torchrun", True, 1, 0)]
    assert not dist.is_initialized()


def test_single_process_runs_in_place() -> None:
    seen = []
    launch(lambda: seen.append(dist.is_initialized()), num_gpus_per_machine=1)
    assert seen == [False]
    model = LinearRegression()
    assert create_ddp_model(model) is model
    assert (comm.get_rank(), comm.get_world_size(), comm.is_main_process()) == (0, 1, True)
    with pytest.raises(ValueError, match="auto"):
        launch(lambda: None, num_gpus_per_machine=2, num_machines=2)
