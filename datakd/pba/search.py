"""Population Based Augmentation search (Ho et al. 2019) as role-wise KD runs it, on Ray Tune.

A population (default 16) of runs of one recipe trains on a reduced split (default 4,000 training images,
the rest of the training set as validation, one split shared by every member), each member with its own
seed and PBA policy. Ray Tune's `PopulationBasedTraining` compares them every 3 epochs on validation
accuracy: the bottom 25 % copy weights and policy of the top 25 % (exploit) and then perturb the 60
integers of the policy with PBA's rule (explore, `datakd.augmenters.pba_policy.explore`). Every member
starts from the all-zero policy. The best member's policy history is the schedule.

Stage-α searches with the teacher alone (``role="teacher"``: members are `train` runs); Stage-β with the
student distilled from the fixed Stage-α teacher (``role="student"``: members are `distill` runs). The same
code runs locally or on a Ray cluster (``address="ray://head:10001"`` or ``"auto"``).
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from datakd.augmenters.pba_policy import POLICY_LENGTH, Schedule, explore
from datakd.checkpoint import atomic_write_text
from datakd.config import RunConfig
from datakd.errors import ConfigError, DatakdError
from datakd.faults import STORAGE_ERRNOS, StorageError, check_writable, os_error_in, reason
from datakd.pba.spec import REWARD, TrialSpec

ROLES = {"teacher": "train", "student": "distill"}
INSTALL_HINT = "PBA search needs Ray Tune, which is not installed: pip install 'datakd[pba]'"


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def prepare_spec(
    cfg: RunConfig,
    role: str,
    epochs: int | None = None,
    train_size: int = 4000,
    val_size: int | None = None,
    split_seed: int = 0,
    cutout: int = 0,
) -> TrialSpec:
    """Check the recipe for `role` and fix the reduced split; paths become absolute for remote workers."""
    if role not in ROLES:
        raise ConfigError(f"unknown PBA search role {role!r}; valid choices: {', '.join(ROLES)}")
    mode = ROLES[role]
    if role == "student" and not cfg.teacher.checkpoint:
        raise ConfigError(
            "a student search distils from the Stage-α teacher: pass --teacher-checkpoint "
            "(or teacher.checkpoint)"
        )
    if role == "teacher":
        from datakd.losses.base import LOSSES

        needy = [n for n, o in cfg.loss.items() if LOSSES.get(o.get("type", n)).needs_teacher]
        if needy:
            raise ConfigError(f"a teacher search trains without a teacher, but loss terms {needy} need one")
    from datakd.data.base import DATASETS

    bundle = DATASETS.build(
        cfg.data.dataset, root=cfg.data.root, download=cfg.data.download, **cfg.data.options
    )
    total = len(bundle.train)
    val = total - train_size if val_size is None else val_size
    if train_size < 1 or val < 1 or train_size + val > total:
        raise ConfigError(
            f"a reduced split of {train_size} training + {val} validation images does not fit the "
            f"{total} training images of {cfg.data.dataset!r}"
        )
    values = cfg.to_dict()
    values["data"]["root"] = _absolute(cfg.data.root)
    for section in ("student", "teacher"):
        values[section]["checkpoint"] = _absolute(getattr(cfg, section).checkpoint)
    return TrialSpec(mode, values, epochs or cfg.total_epochs, train_size, val, split_seed, cutout)


def _init_ray(ray: Any, address: str | None, num_cpus: int | None, quiet: bool) -> bool:
    """Connect to (or start) Ray with this datakd importable on the workers; True if we started it."""
    import datakd

    package = Path(datakd.__file__).resolve().parent
    if ray.is_initialized():
        return False
    if address is None:
        # Local workers import datakd from the same place as this process (a checkout or an install).
        paths = [str(package.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
    else:
        env = {
            "py_modules": [str(package)]
        }  # ship this datakd to the cluster (its dependencies must be there)
    ray.init(
        address=address,
        num_cpus=num_cpus if address is None else None,
        runtime_env=env,
        include_dashboard=False,
        log_to_driver=not quiet,
        logging_level="ERROR" if quiet else "INFO",
    )
    return True


def concurrency_warning(
    resources: dict[str, float], population: int, cpus_per_trial: float, gpus_per_trial: float, synch: bool
) -> str | None:
    """Why an asynchronous search on too few slots is weak, or None when it is not.

    Ray Tune runs only as many members at once as the resources allow and does not time-slice them, so
    with asynchronous PBT the first members train to the end before the rest start, and exploits compare
    members that are many epochs apart. Synchronous PBT pauses every member at each interval instead.
    """
    if synch:
        return None
    limits = [resources.get("CPU", 0.0) / cpus_per_trial] if cpus_per_trial > 0 else []
    if gpus_per_trial > 0:
        limits.append(resources.get("GPU", 0.0) / gpus_per_trial)
    slots = int(min(limits)) if limits else population
    if slots >= population:
        return None
    return (
        f"only {slots} of the {population} members can run at once on these resources; asynchronous PBT "
        "would then compare members that are epochs apart. Pass --synch (or more resources / a smaller "
        "--population) for a meaningful search."
    )


def checkpoints_to_keep(perturbation_interval: int, synch: bool) -> int | None:
    """How many checkpoints Ray keeps per member (None: all), so that an exploited one still exists.

    A member that exploits restores the donor's checkpoint from the last perturbation, possibly after the
    donor trained on (more members than slots). In synchronous PBT the donor stops at the next
    perturbation until every member got there, so it writes at most one interval of epoch checkpoints (plus
    PBT's and the pause's own saves) before the copy is read: keeping two intervals' worth is enough.
    Asynchronous PBT bounds nothing, so every checkpoint is kept (disk: members × epochs × one state)."""
    return 2 * perturbation_interval + 2 if synch else None


def _trial_id(result: Any) -> str:
    return str(result.metrics.get("trial_id", Path(str(result.path)).name))


def run_search(
    spec: TrialSpec,
    out: Path,
    population: int = 16,
    perturbation_interval: int = 3,
    quantile: float = 0.25,
    seed: int = 0,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    num_cpus: int | None = None,
    synch: bool = False,
    quiet: bool = False,
    meta: dict[str, Any] | None = None,
    max_failures: int = 2,
    trainable_class: Any = None,
) -> dict[str, Any]:
    """Run the search; writes ``out/schedule.json`` (the best member's policy per epoch) and
    ``out/search.json`` (every member's final reward), and returns the summary.

    Faults: every member checkpoints each epoch, and a member whose process dies or raises is restarted
    from its last checkpoint up to `max_failures` times (Ray's FailureConfig). When ``out`` already holds
    a search (its driver was killed), the same call resumes it (Tuner.restore): finished members keep their
    results, unfinished ones continue from their checkpoints. `trainable_class` replaces PBATrial (tests)."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import PopulationBasedTraining
    except ImportError:
        raise DatakdError(INSTALL_HINT) from None
    from datakd.pba.trainable import PBATrial

    if max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {max_failures}")
    if population < 2:
        raise ConfigError(f"a PBA population needs at least 2 members, got {population}")
    if not 0 < quantile <= 0.5:
        raise ConfigError(f"the PBT quantile must be in (0, 0.5], got {quantile}")
    out = Path(out).resolve()
    check_writable(out, "search directory")  # a full or read-only --out: one line before Ray starts
    torn = _torn_state(out / "ray" / "search")
    if torn is not None:
        raise StorageError(
            f"the PBA search state {str(torn)!r} is cut short (Ray writes it in place, and a full disk cut "
            f"it); the search cannot be resumed: delete {str(out / 'ray')!r} or choose another --out to "
            "start it again"
        )
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def explore_policy(config: dict[str, Any]) -> dict[str, Any]:
        config["policy"] = explore(config["policy"], rng)
        return config

    started = _init_ray(ray, address, num_cpus, quiet)
    warning = concurrency_warning(ray.cluster_resources(), population, cpus_per_trial, gpus_per_trial, synch)
    if warning:
        print(f"datakd pba search: warning: {warning}", file=sys.stderr)
    try:
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=perturbation_interval,
            quantile_fraction=quantile,
            custom_explore_fn=explore_policy,
            log_config=True,
            synch=synch,
        )
        trainable = tune.with_resources(
            tune.with_parameters(trainable_class or PBATrial, spec=spec.to_dict()),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        experiment = out / "ray" / "search"
        if tune.Tuner.can_restore(str(experiment)):
            if not quiet:
                print(f"datakd pba search: resuming the search in {experiment}", file=sys.stderr)
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"policy": [0] * POLICY_LENGTH},  # PBA starts every member with no augmentation
                tune_config=tune.TuneConfig(
                    scheduler=scheduler, metric=REWARD, mode="max", num_samples=population, reuse_actors=True
                ),
                run_config=tune.RunConfig(
                    name="search",
                    storage_path=str(out / "ray"),
                    stop={"training_iteration": spec.epochs},
                    # every epoch: a crashed member or a restored search loses at most one epoch per member
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=checkpoints_to_keep(perturbation_interval, synch), checkpoint_frequency=1
                    ),
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    verbose=0 if quiet else 1,
                ),
            )
        try:
            results = tuner.fit()
            finished = [r for r in results if r.metrics and "schedule" in r.metrics]
        except Exception as exc:  # Ray's own writes (experiment state, a member's error.pkl) on a full disk
            fault = _storage_fault(out / "ray" / "search", exc)
            if fault is None:
                raise
            raise fault from None
    finally:
        if started:
            ray.shutdown()
    if not finished:
        errors = [r.error for r in results if r.error is not None]
        if not errors:
            raise DatakdError("no PBA search member finished; first error: unknown")
        cause = _cause(errors[0])
        storage = (
            isinstance(cause, StorageError) or getattr(os_error_in(cause), "errno", None) in STORAGE_ERRNOS
        )
        kind = type(cause) if isinstance(cause, StorageError) else StorageError if storage else DatakdError
        raise kind(f"no PBA search member finished; first error: {_error_line(errors[0])}")
    best = max(finished, key=lambda r: r.metrics[REWARD])
    errored = sorted(_trial_id(r) for r in results if r.error is not None)
    if errored:  # a smaller population than asked for searched less; say so rather than hide it
        print(
            f"datakd pba search: warning: {len(errored)} of {population} members failed and were dropped: "
            f"{', '.join(errored)} (their errors: {out / 'ray' / 'search'})",
            file=sys.stderr,
        )
    summary = {
        "role": "teacher" if spec.mode == "train" else "student",
        "population": population,
        "epochs": spec.epochs,
        "train_size": spec.train_size,
        "val_size": spec.val_size,
        "perturbation_interval": perturbation_interval,
        "quantile": quantile,
        "seed": seed,
        "synch": synch,
        "best": {"trial": _trial_id(best), REWARD: best.metrics[REWARD], "path": str(best.path)},
        "errored": errored,
        "members": sorted(
            (
                {"trial": _trial_id(r), REWARD: r.metrics.get(REWARD), "policy": r.config["policy"]}
                for r in results
                if r.metrics
            ),
            key=lambda m: m["trial"],
        ),
        "ray_version": ray.__version__,
        **(meta or {}),
    }
    history = json.loads(best.metrics["schedule"])
    schedule_meta = {k: v for k, v in summary.items() if k != "members"}
    Schedule([tuple(p) for p in history], schedule_meta).save(out / "schedule.json")
    atomic_write_text(json.dumps(summary, indent=1) + "\n", out / "search.json")
    return summary


def _storage_fault(experiment: Path, exc: BaseException) -> StorageError | None:
    """One line when the search failed because its storage refused a file: Ray uploads every member
    checkpoint into `experiment` (pyarrow's copy, not datakd's writer) and then cannot even read back the
    error files it cut short, so the cause is found by trying the storage, not only in the chain."""
    error = os_error_in(exc)
    if error is not None and error.errno in STORAGE_ERRNOS:
        why = reason(error)
    else:
        try:
            check_writable(experiment, "search storage")
        except StorageError as refused:
            why = str(refused).split("; ")[0].rsplit(": ", 1)[-1]
        else:
            return None
    return StorageError(
        f"the PBA search stopped: Ray could not write its storage {str(experiment)!r}: {why}; the members' "
        "checkpoints written before are kept there; free space or choose another --out, then rerun the "
        "same command (it resumes if Ray's state survived; if it says the state is cut short, start again)"
    )


def _torn_state(experiment: Path) -> Path | None:
    """Ray's newest experiment state when it is not whole JSON (Ray restores from it and, finding it cut,
    silently starts a broken search instead), else None."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return states[-1]
    return None


def _cause(error: BaseException) -> BaseException:
    """The member's own exception inside Ray's wrapper (RayTaskError keeps it as `cause`)."""
    return getattr(error, "cause", None) or error


def _error_line(error: BaseException) -> str:
    """One line for a member's error: a datakd error's own message (a full disk names its file), else the
    last line of Ray's text, which holds the exception and not the traceback above it."""
    cause = _cause(error)
    if isinstance(cause, DatakdError) and cause.args:
        return str(cause.args[0])
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
