"""Run tilesegd on a SLURM cluster with dask-jobqueue: each SLURM job is one Dask worker with one
GPU; every worker loads the model once and segments blocks of every scene into shared stores.

Run it on a login node (or in a small CPU job) that sees the same filesystem as the GPU nodes::

    pip install 'tilesegd[distributed]'           # or use the Apptainer image, see below
    python configs/slurm_dask_jobqueue.py --input /scratch/scenes --model /scratch/model.pt2 \\
        --output /scratch/out --jobs 8 --queue gpu --account myproject

With the Apptainer image, workers start inside the container: pass
``--python "apptainer exec --nv /path/tilesegd.sif python"``. Rerunning the same command
resumes: finished scenes are skipped and half-done ones continue from their finished blocks.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, nargs="+", help="scene files or directories")
    p.add_argument("--model", required=True, help="model file (.ts / .pt2)")
    p.add_argument("--output", required=True, help="output directory (shared filesystem)")
    p.add_argument("--jobs", type=int, default=4, help="SLURM jobs = Dask workers = GPUs")
    p.add_argument("--queue", default="gpu", help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--cpus", type=int, default=8, help="CPUs per job (tile readers/writers)")
    p.add_argument("--memory", default="32GB", help="memory per job")
    p.add_argument("--walltime", default="04:00:00")
    p.add_argument("--python", default=None, help="python command on the nodes")
    p.add_argument("--config", default=None, help="tilesegd run YAML (configs/run.yaml)")
    return p.parse_args(argv)


def make_cluster(args: argparse.Namespace):
    """A dask-jobqueue SLURMCluster whose jobs are one single-task GPU worker each."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=1,  # one task at a time per worker: the GPU is shared by nothing else
        processes=1,
        job_cpu=args.cpus,  # ...but book the CPUs its reader / writer threads use
        memory=args.memory,
        walltime=args.walltime,
        job_extra_directives=["--gres=gpu:1"],
        python=args.python,
        # job_script_prologue=["module load cuda", "source /path/to/venv/bin/activate"],
    )


def main(argv: list[str] | None = None) -> int:
    from tilesegd.api import run

    args = parse_args(argv)
    cluster = make_cluster(args)
    print(cluster.job_script(), file=sys.stderr)  # what each SLURM job runs
    cluster.scale(jobs=args.jobs)
    try:
        doc = run(
            config_file=args.config,
            input=args.input,
            model=args.model,
            output=args.output,
            scheduler=cluster.scheduler_address,
            device="cuda",
            workers=args.cpus,
        )
    finally:
        cluster.close()
    failed = [n for n, e in doc["scenes"].items() if e["status"] == "failed"]
    print(f"{len(doc['scenes']) - len(failed)} of {len(doc['scenes'])} scenes done")
    return 4 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
