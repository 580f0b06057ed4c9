"""What a running gateway holds: the experiments, the assigner, and each arm's loaded encoder + index.

Artifacts are loaded once per distinct path (an encoder once per (path, Matryoshka dimensions)), so arms and
experiments that share an encoder or an index share one ONNX session / one FAISS index and one micro-batcher.
The app's lifespan creates the Runtime (`start`) and closes it (`close`).

Hot reload (`reload`): the new folder is validated and every new artifact is loaded off the event loop while
the old Serving keeps answering; then `self.serving` is replaced in one assignment on the loop thread. A
request picks its Serving once, so it finishes on the old artifacts even if a reload lands meanwhile; batchers
no longer used are closed after their queued queries finish. No request is dropped.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import structlog

from experiments.loader import ExperimentSet, load_folder
from experiments.schema import Arm, Experiment
from experiments.state import ExperimentState
from gateway.artifacts import check_dimensions, check_pair, read_encoder_manifest, read_index_manifest
from gateway.assignment import Assigner, Assignment
from gateway.batcher import MicroBatcher
from gateway.encoder import Encoder
from experiments.errors import InputError
from gateway.query_cache import QueryCache
from gateway.search import VectorIndex
from gateway.settings import Settings

log = structlog.get_logger("abgate.runtime")


def default_arm(settings: Settings) -> Arm | None:
    """The arm for units that no running experiment takes, when the settings name one."""
    if settings.default_encoder and settings.default_index:
        return Arm("default", 1.0, settings.default_encoder, settings.default_index)
    return None


def plan_assigner(settings: Settings, experiments: ExperimentSet, state: ExperimentState) -> Assigner:
    """The assigner a gateway with these settings serves: the one plan shared by `serve --check` and the
    runtime, so the preflight can never accept what the runtime then refuses."""
    try:
        return Assigner(list(experiments.experiments.values()), settings.layer, default_arm(settings),
                        is_admin_stopped=state.admin_stopped)
    except ValueError as exc:
        raise InputError(f"{exc}: add a running experiment for this layer, or set default_encoder and "
                         "default_index (--default-encoder, --default-index)", file=str(settings.experiments_dir),
                         field="layer") from None


def check_arm_artifacts(settings: Settings, arm: Arm) -> None:
    """The arm's encoder and index folders are complete, paired and of one dimension: manifests only, cheap."""
    encoder = read_encoder_manifest(settings.resolve(arm.encoder))
    index_path = settings.resolve(arm.index)
    index = read_index_manifest(index_path, encoder_checksum=str(encoder["checksum"]))
    check_dimensions(index["dimension"], arm.dimensions or encoder["dimension"], str(index_path), arm.name)


@dataclass(frozen=True)
class ArmRuntime:
    arm: Arm
    encoder: Encoder
    index: VectorIndex
    batcher: MicroBatcher


@dataclass(frozen=True)
class Serving:
    """One consistent view: experiments, assigner and the artifacts of every arm they can send traffic to."""
    experiments: ExperimentSet
    assigner: Assigner
    arms: dict[tuple, ArmRuntime]     # by artifact key, see Runtime.arm_key
    loaded_at: datetime

    def route(self, unit_id: str) -> tuple[Assignment, ArmRuntime]:
        assignment = self.assigner.assign(unit_id)
        return assignment, self.arms[Runtime.arm_key_static(assignment.arm)]


class Runtime:
    def __init__(self, settings: Settings, on_batch=None) -> None:
        self.settings = settings
        # Resources (the state file, the worker pool) are taken in start(), which the app's lifespan calls.
        self.state: ExperimentState | None = None
        self.executor: ThreadPoolExecutor | None = None
        self._on_batch = on_batch
        self._encoders: dict[tuple, Encoder] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._batchers: dict[tuple, MicroBatcher] = {}
        self._reload_lock = asyncio.Lock()
        # One cache for every encoder: entries are keyed by encoder checksum, so arms never share vectors.
        self.query_cache = QueryCache(settings.query_cache) if settings.query_cache > 0 else None
        self.serving: Serving | None = None

    # -- keys -------------------------------------------------------------------------------------------

    @staticmethod
    def arm_key_static(arm: Arm) -> tuple:
        return (arm.encoder, arm.dimensions, arm.index)

    def _encoder_key(self, arm: Arm) -> tuple:
        return (str(self.settings.resolve(arm.encoder)), arm.dimensions)

    # -- loading ----------------------------------------------------------------------------------------

    def _load_experiments(self, force: bool) -> ExperimentSet:
        return load_folder(self.settings.experiments_dir, state=self.state, force=force or self.settings.force)

    def _build(self, experiments: ExperimentSet) -> tuple[Assigner, dict[tuple, ArmRuntime]]:
        """In a worker thread: the assigner, and every arm's artifacts (loading only what is new)."""
        assigner = plan_assigner(self.settings, experiments, self.state)
        arms: dict[tuple, ArmRuntime] = {}
        for arm in assigner.serving_arms():
            key = self.arm_key_static(arm)
            if key in arms:
                continue
            ekey = self._encoder_key(arm)
            encoder = self._encoders.get(ekey)
            if encoder is None:
                encoder = Encoder.load(ekey[0], threads=self.settings.encoder_threads, device=self.settings.device,
                                       dimensions=arm.dimensions)
                self._encoders[ekey] = encoder
            ipath = str(self.settings.resolve(arm.index))
            index = self._indexes.get(ipath)
            if index is None:
                # FAISS gets the encoder's thread count: parallelism comes from the batch workers, and OpenMP
                # threads of two concurrent batches would only fight over the same cores.
                index = VectorIndex.load(ipath, encoder_checksum=encoder.checksum,
                                         gpu=self.settings.device != "cpu",
                                         threads=self.settings.encoder_threads or None)
                self._indexes[ipath] = index
            else:
                check_pair(index.manifest, encoder.checksum, ipath)
            check_dimensions(index.dimension, encoder.dimension, ipath, arm.name)
            arms[key] = ArmRuntime(arm, encoder, index, self._batcher(ekey, encoder))
        return assigner, arms

    def _batcher(self, ekey: tuple, encoder: Encoder) -> MicroBatcher:
        if ekey not in self._batchers:
            s = self.settings
            self._batchers[ekey] = MicroBatcher(encoder, self.executor, max_batch=s.max_batch,
                                                max_wait_ms=s.max_wait_ms, workers=s.batch_workers,
                                                on_batch=self._on_batch, cache=self.query_cache)
        return self._batchers[ekey]

    async def start(self) -> Serving:
        self.state = ExperimentState.load(self.settings.state_file)
        self.executor = ThreadPoolExecutor(max_workers=max(2, self.settings.batch_workers * 4),
                                           thread_name_prefix="abgate-work")
        return await self.reload(force=False)

    # -- what requests read ------------------------------------------------------------------------------

    def route(self, unit_id: str) -> tuple[Assignment, "ArmRuntime"]:
        """The unit's assignment and its arm's loaded artifacts, from one consistent Serving."""
        return self.serving.route(unit_id)

    def arm_runtime(self, arm: Arm) -> "ArmRuntime":
        """The loaded artifacts of an arm of the current Serving (KeyError once a reload dropped it)."""
        return self.serving.arms[self.arm_key_static(arm)]

    def experiments(self) -> dict[str, Experiment]:
        """The loaded experiments by name (empty before the first load)."""
        serving = self.serving
        return dict(serving.experiments.experiments) if serving is not None else {}

    def experiment(self, name: str) -> Experiment | None:
        serving = self.serving
        return serving.experiments.experiments.get(name) if serving is not None else None

    async def reload(self, *, force: bool = False) -> Serving:
        """Validate the folder, load new artifacts off the loop, swap, then release what is unused."""
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            experiments = await loop.run_in_executor(self.executor, self._load_experiments, force)
            assigner, arms = await loop.run_in_executor(self.executor, self._build, experiments)
            self.state.record(list(experiments.experiments.values()))
            self.serving = Serving(experiments, assigner, arms, datetime.now(timezone.utc))
            await self._release_unused()
            log.info("experiments loaded", folder=str(experiments.folder), layer=self.settings.layer,
                     experiments=sorted(experiments.experiments), artifacts=len(arms),
                     encoders=len(self._encoders), indexes=len(self._indexes),
                     providers=sorted({p for e in self._encoders.values() for p in e.providers[:1]}),
                     gpu_indexes=sum(i.on_gpu for i in self._indexes.values()))
            return self.serving

    async def stop_experiment(self, name: str) -> Experiment:
        """Admin stop: recorded in the state file, applied by swapping in a new assigner."""
        async with self._reload_lock:
            serving = self.serving
            exp = serving.experiments.experiments.get(name)
            if exp is None:
                raise KeyError(name)
            self.state.stop(name)
            assigner = plan_assigner(self.settings, serving.experiments, self.state)
            self.serving = replace(serving, assigner=assigner)
            log.warning("experiment stopped by admin", experiment=name)
            return exp

    async def _release_unused(self) -> None:
        used_encoders = {self._encoder_key(a.arm) for a in self.serving.arms.values()}
        used_indexes = {str(self.settings.resolve(a.arm.index)) for a in self.serving.arms.values()}
        for key in [k for k in self._batchers if k not in used_encoders]:
            await self._batchers.pop(key).close()
        for key in [k for k in self._encoders if k not in used_encoders]:
            del self._encoders[key]
        for key in [k for k in self._indexes if k not in used_indexes]:
            del self._indexes[key]

    def queue_depth(self) -> int:
        return sum(b.depth for b in list(self._batchers.values()))  # a reload may add one meanwhile

    def query_cache_stats(self) -> dict:
        """Hits, misses, size and capacity of the query-embedding cache; {} when it is off."""
        return self.query_cache.stats() if self.query_cache is not None else {}

    @property
    def ready(self) -> bool:
        return self.serving is not None

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    def experiment_status(self, exp: Experiment, now: datetime | None = None) -> str:
        """draft | running | stopped as served now (start/end window; admin stops apply to this layer)."""
        now = now or datetime.now(timezone.utc)
        if exp.layer == self.settings.layer:
            return self.serving.assigner.status(exp, now)
        return exp.serving_status(now)

    def describe_artifacts(self) -> dict:
        return {"encoders": {str(Path(k[0]).name) + (f"@{k[1]}" if k[1] else ""): e.checksum[:16]
                             for k, e in self._encoders.items()},
                "indexes": {str(Path(k).name): i.checksum[:16] for k, i in self._indexes.items()}}
