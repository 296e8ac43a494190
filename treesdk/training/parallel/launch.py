"""Launching ``treesdk train`` on several processes through torchrun (``torch.distributed.run``).

A run asking for ``launch.nproc_per_node`` N (``treesdk train --nproc-per-node N [--nnodes M
--rdzv-endpoint HOST:PORT] [--max-restarts R]``, or the same RunConfig given to
:func:`treesdk.train`) is handed to torchrun by :func:`treesdk.training.loop.session.run_training`: every
worker runs ``python -m treesdk train --config RUN_FILE --out RUN``, under torchrun, which this
process then *is* (``torch.distributed.run.main`` runs in-process, so SIGINT/SIGTERM sent to it
reach torchrun's agent, which forwards them to every worker). Running
``torchrun --nproc-per-node N -m treesdk train ...`` by hand does the same.

Rendezvous: one node uses ``--standalone`` (a free local port). Several nodes use the ``c10d``
rendezvous at ``--rdzv-endpoint`` (a host:port every node reaches; usually the first node) with a
rendezvous id derived from the run folder, so the same command on every node finds its peers;
giving ``--node-rank`` selects the ``static`` rendezvous instead (``--node-rank`` 0..M-1, rank 0's
host at the endpoint), as ``torchrun --node-rank`` does.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from treesdk.training.parallel.distributed import launched_by_torchrun


def needs_launch(nproc_per_node: int, nnodes: int, max_restarts: int) -> bool:
    """Whether the run must start torchrun (it is not already a torchrun worker and more
    than one process, more than one node, or restarts were asked for)."""
    return not launched_by_torchrun() and (nproc_per_node > 1 or nnodes > 1 or max_restarts > 0)


def rendezvous_id(run_dir: str | Path) -> str:
    """A rendezvous id that is the same on every node launching the same run folder."""
    name = Path(run_dir).name or "run"
    digest = hashlib.sha1(str(Path(run_dir)).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    return f"treesdk-{safe}-{digest}"


def torchrun_argv(
    worker_args: Sequence[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    run_dir: str | Path | None = None,
    module: str = "treesdk",
) -> list[str]:
    """The argument list for ``torch.distributed.run`` that starts ``python -m treesdk <worker_args>``
    on ``nproc_per_node`` processes per node.

    Raises ValueError for combinations torchrun cannot run (several nodes without an endpoint).
    """
    _check(nproc_per_node, nnodes, max_restarts)
    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}"]
    if nnodes == 1 and rdzv_endpoint is None:
        args.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ValueError(
                f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (an address of the first node that every "
                "node can reach, e.g. --rdzv-endpoint node0:29500)"
            )
        if node_rank is not None:
            if not 0 <= node_rank < nnodes:
                raise ValueError(f"--node-rank {node_rank}: must be in 0..{nnodes - 1} for --nnodes {nnodes}")
            host, _, port = rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--rdzv-endpoint {rdzv_endpoint!r}: expected HOST:PORT, e.g. node0:29500")
            args += ["--rdzv-backend=static", f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}"]
        else:
            if run_dir is None:
                raise ValueError("several nodes need --out RUN_DIR (the same on every node; it names the rendezvous)")
            args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rendezvous_id(run_dir)}"]
    # "--" keeps torchrun's parser off the worker's flags (argparse would reject e.g. ``--d`` as an
    # ambiguous abbreviation of its own ``--duplicate-*`` options); the CLI accepts a leading "--" too
    return [*args, "-m", module, "--", *worker_args]


def check_launch(settings: Any) -> None:
    """The launcher settings of a run that is not launched from here (one process, or a torchrun
    worker): the values alone, as :func:`torchrun_argv` checks them (``settings``: a ``LaunchConfig``)."""
    _check(settings.nproc_per_node, settings.nnodes, settings.max_restarts)


def _check(nproc_per_node: int, nnodes: int, max_restarts: int) -> None:
    if nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node {nproc_per_node}: need at least 1 process per node")
    if nnodes < 1:
        raise ValueError(f"--nnodes {nnodes}: need at least 1 node")
    if max_restarts < 0:
        raise ValueError(f"--max-restarts {max_restarts}: must be 0 or more")


def launch(argv: Sequence[str]) -> int:
    """Run torchrun with ``argv`` (from :func:`torchrun_argv`) in this process; returns the exit
    code: 0 when every worker succeeded, 1 when one failed, ``128 + signal`` when this process was
    told to stop (torchrun then forwards the signal: the workers finish the iteration, checkpoint
    and exit)."""
    # torchrun's agent (elastic, rendezvous) is imported only by the process that launches
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(list(argv))
    except SignalException as exc:
        print(f"stopped by {exc.sigval.name}: the workers were asked to finish the iteration and write a "
              "checkpoint; continue with --resume", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        failures = exc.failures
        # failures maps global rank -> ProcessFailure (which itself knows only its local_rank)
        first = min(failures.items(), key=lambda item: item[1].timestamp) if failures else None
        where = f"rank {first[0]} (exit code {first[1].exitcode})" if first else "a worker"
        print(f"error: training failed: {where} exited first; its output above shows why", file=sys.stderr)
        return 1
    return 0
