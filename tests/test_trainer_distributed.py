"""Two real processes over gloo: distributed Sinkhorn-Knopp and centring equal one process on the whole batch."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.losses import global_count, sinkhorn_knopp, softmax_center, update_center

WORLD = 2


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "cls": torch.randn(8, 6, generator=g),  # DINO: 4 rows per rank
        "tokens": torch.randn(8, 6, generator=g) * 2,  # iBOT: masked tokens, 5 on rank 0 and 3 on rank 1
        "patch": torch.randn(4, 3, 6, generator=g),  # [B, N, K] patch logits, 2 images per rank
        "center": torch.randn(1, 6, generator=g),
    }


def _split(rank: int, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return x.split(sizes)[rank]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        x = _inputs()
        res = {
            "sk_cls": sinkhorn_knopp(_split(rank, x["cls"], [4, 4]), temp=0.05),
            "sk_tokens": sinkhorn_knopp(_split(rank, x["tokens"], [5, 3]), temp=0.05),
            # a rank without any masked token still takes part in every collective
            "sk_empty": sinkhorn_knopp(_split(rank, x["tokens"], [8, 0]), temp=0.05),
            "center": update_center(x["center"], _split(rank, x["cls"], [4, 4]), momentum=0.9),
            "center3": update_center(x["center"].view(1, 1, 6), _split(rank, x["patch"], [2, 2]), momentum=0.9),
            "count": torch.tensor(global_count([5, 3][rank])),
        }
        res["probs"] = softmax_center(_split(rank, x["cls"], [4, 4]), res["center"], temp=0.1)
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_sinkhorn_equals_single_process_on_the_concatenated_batch(ranks):
    x = _inputs()
    expected = sinkhorn_knopp(x["cls"], temp=0.05)
    torch.testing.assert_close(torch.cat([r["sk_cls"] for r in ranks]), expected, atol=1e-6, rtol=1e-5)
    # unequal rows per rank (masked tokens): the global count is all-reduced
    expected = sinkhorn_knopp(x["tokens"], temp=0.05)
    torch.testing.assert_close(torch.cat([r["sk_tokens"] for r in ranks]), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["sk_empty"] for r in ranks]), expected, atol=1e-6, rtol=1e-5)
    assert ranks[1]["sk_empty"].shape == (0, 6)
    # and the distributed result is not just each rank's own SK
    assert not torch.allclose(ranks[0]["sk_cls"], sinkhorn_knopp(x["cls"][:4], temp=0.05), atol=1e-4)


def test_centring_equals_single_process_on_the_concatenated_batch(ranks):
    x = _inputs()
    center = update_center(x["center"], x["cls"], momentum=0.9)
    for r in ranks:
        torch.testing.assert_close(r["center"], center, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            r["center3"], update_center(x["center"].view(1, 1, 6), x["patch"], 0.9), atol=1e-6, rtol=1e-5
        )
        assert int(r["count"]) == 8
    torch.testing.assert_close(
        torch.cat([r["probs"] for r in ranks]), softmax_center(x["cls"], center, 0.1), atol=1e-6, rtol=1e-5
    )


def test_threads_and_workers_take_the_physical_cores(monkeypatch):
    """Defaults from the machine: workers + compute threads = physical cores on a CPU; config values win."""
    import trainer.distributed as td

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        for cores, workers, threads in ((1, 0, 1), (2, 1, 1), (4, 1, 3), (8, 2, 6), (16, 4, 12)):
            monkeypatch.setattr(td, "physical_cores", lambda c=cores: c)
            assert td.data_workers(None, "cpu") == workers
            assert td.configure_cpu_threads(workers) == threads == torch.get_num_threads()
        monkeypatch.setattr(td, "physical_cores", lambda: 16)
        assert td.data_workers(None, "cpu", world_size=2) == 2  # each of two ranks gets 8 cores
        assert td.configure_cpu_threads(2, world_size=2) == 6
        assert td.data_workers(3, "cpu") == 3 and td.configure_cpu_threads(3, threads=5) == 5  # --set wins
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert td.configure_cpu_threads(1) == 2  # the environment wins over the default, not over --set
        assert td.configure_cpu_threads(1, threads=3) == 3
    finally:
        torch.set_num_threads(before)


def test_physical_cores_counts_hyperthread_siblings_once(monkeypatch, tmp_path):
    import builtins

    import trainer.distributed as td

    # four logical CPUs, two per core (core ids 0, 0, 1, 1), as Linux's sysfs topology describes them
    topo = {cpu: core for cpu, core in enumerate([0, 0, 1, 1])}
    real_open = builtins.open

    def fake_open(path, *a, **kw):
        path = str(path)
        if path.startswith("/sys/devices/system/cpu/cpu"):
            cpu = int(path.split("/cpu")[-1].split("/")[0])
            f = tmp_path / f"{cpu}-{path.rsplit('/', 1)[-1]}"
            f.write_text(f"{topo[cpu] if path.endswith('core_id') else 0}\n")
            return real_open(f, *a, **kw)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(td.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(builtins, "open", fake_open)
    assert td.physical_cores() == 2
