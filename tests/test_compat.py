"""Framework internals stay in their compatibility modules, and those still hold.

The first tests read the code: outside the compatibility modules, no import of
a Flower, Ray, Streamlit or streamlit-authenticator name that is not public,
no unchecked Flower construction, no process-wide warning filter. The canaries
after them check, on the installed versions, each thing a compatibility module
says it relies on; a failure names the shim that a new version broke.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPAT_MODULES = {
    "pages/_streamlit_compat.py",
    "simulation/compat/flower.py",
    "simulation/compat/ray.py",
    "simulation/compat/actor.py",
    "healthsync/auth/stauth_compat.py",
    "healthsync/runs/duckdb_compat.py",
}
# Flower's public API: the packages its docs and examples import from (the legacy
# server/client/common ones for SecAgg+, which exists only there in 1.42).
FLOWER_PUBLIC = {
    "flwr.app",
    "flwr.serverapp",
    "flwr.serverapp.strategy",
    "flwr.serverapp.exception",
    "flwr.clientapp",
    "flwr.clientapp.mod",
    "flwr.simulation",
    "flwr.server",
    "flwr.server.strategy",
    "flwr.server.workflow",
    "flwr.client",
    "flwr.client.mod",
    "flwr.common",
}
FRAMEWORKS = ("flwr", "ray", "streamlit", "streamlit_authenticator")
PUBLIC_ROOTS = {"ray", "streamlit", "streamlit_authenticator"}


def _sources() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in ("healthsync", "simulation", "pages"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.relative_to(ROOT).as_posix() not in COMPAT_MODULES]


def _framework(module: str) -> str | None:
    root = module.split(".")[0]
    return root if root in FRAMEWORKS else None


def _module_is_public(module: str) -> bool:
    if module.startswith("flwr"):
        return module in FLOWER_PUBLIC
    # Ray, Streamlit and stauth: their top-level package (``streamlit.testing`` is
    # for tests only); ``ray.util``-style submodules only without a private part.
    parts = module.split(".")
    return module in PUBLIC_ROOTS or (
        parts[0] == "ray" and not any(p.startswith("_") for p in parts)
    )


def _name_is_public(module: str, name: str) -> bool:
    """Whether ``module.name`` is public: exported, or, without ``__all__``, no private module."""
    if name.startswith("_"):
        return False
    imported = importlib.import_module(module)
    exported = getattr(imported, "__all__", None)
    if exported is not None:
        return name in exported or _module_is_public(f"{module}.{name}")
    if module == "streamlit":
        return True  # ``st.*`` is Streamlit's documented API, its modules (column_config) too
    # stauth has no __all__: its classes are public, its modules (models, controllers) not.
    return not isinstance(getattr(imported, name, None), types.ModuleType)


def non_public_uses(path: Path) -> list[str]:
    """Each import of, or attribute read from, a framework that is not public, as text."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _framework(alias.name):
                    if not _module_is_public(alias.name):
                        found.append(f"import {alias.name}")
                    aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom) and node.module and _framework(node.module):
            for alias in node.names:
                if not _module_is_public(node.module) or not _name_is_public(
                    node.module, alias.name
                ):
                    found.append(f"from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _module_is_public(aliases[node.value.id])
            and not _name_is_public(aliases[node.value.id], node.attr)
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return [f"{path.relative_to(ROOT)}:{use}" for use in found]


def test_framework_internals_are_used_only_in_compatibility_modules():
    found = [use for path in _sources() for use in non_public_uses(path)]
    assert not found, "non-public framework use outside the compatibility modules: " + str(found)


def test_the_check_finds_non_public_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import ray._private.worker\n"
        "import streamlit as st\n"
        "import streamlit_authenticator as stauth\n"
        "from flwr.supercore.privacy_accounting import PrivacySpent\n"
        "from flwr.serverapp import PrivacySpent as Spent, _private\n"
        "from flwr.common.constant import SType\n"
        "from streamlit.runtime.context import ContextProxy\n"
        "from flwr.app import Message\n"
        "x = stauth.models, stauth.Authenticate, st._bottom, st.session_state\n"
    )
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        found = non_public_uses(sample)
    finally:
        ROOT = root
    assert [use.split(":", 1)[1] for use in found] == [
        "import ray._private.worker",
        "from flwr.supercore.privacy_accounting import PrivacySpent",
        "from flwr.serverapp import _private",
        "from flwr.common.constant import SType",
        "from streamlit.runtime.context import ContextProxy",
        "stauth.models",
        "st._bottom",
    ]


UNCHECKED = {"__dict__", "__new__", "__qualname__", "__class__"}


def test_flower_objects_are_built_unchecked_only_in_the_compat_module():
    found = []
    for path in sorted((ROOT / "simulation").rglob("*.py")):
        if path.relative_to(ROOT).as_posix() in COMPAT_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in UNCHECKED:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not found, found


def _is_warning_filter(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("filterwarnings", "simplefilter", "resetwarnings")
    )


def test_no_process_wide_warning_filters():
    found = []
    for path in [*_sources(), *(ROOT / p for p in sorted(COMPAT_MODULES))]:
        tree = ast.parse(path.read_text())
        scoped = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.With)
            and any("catch_warnings" in ast.unparse(item.context_expr) for item in node.items)
            for inner in ast.walk(node)
        }
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if _is_warning_filter(node) and id(node) not in scoped
        ]
    assert not found, found


# ------------------------------------------------------------ Flower canaries
def _ask(**fields):
    from flwr.app import Message, RecordDict

    from tests.inprocess_grid import allow_messages

    allow_messages()
    ask = Message(RecordDict(), dst_node_id=3, message_type="train", **fields)
    ask.metadata.__dict__["_message_id"] = "ask-1"
    return ask


def test_flower_messages_keep_the_fields_unchecked_reply_writes():
    from flwr.app import Message, MetricRecord, RecordDict

    from simulation.compat import flower

    ask = _ask()
    content = RecordDict({"metrics": MetricRecord({"n": 1})})
    theirs = Message(content, reply_to=ask)
    ours = flower.unchecked_reply(ask, content, theirs.metadata.created_at)
    assert set(vars(theirs)) == set(vars(ours)) == {"_metadata", "_content", "_error"}
    mine, flowers = dict(vars(ours.metadata)), dict(vars(theirs.metadata))
    assert mine.pop("_ttl") == pytest.approx(flowers.pop("_ttl"), abs=1.0)
    assert mine == flowers
    assert ours.metadata.reply_to_message_id == "ask-1" and ours.metadata.src_node_id == 3
    assert ours.content is content and not ours.has_error()


def test_our_asks_are_the_messages_fedavg_builds():
    """``same_asks`` stands in for ``FedAvg._construct_messages``, which ``configure_train``
    must still call: the same messages, metadata and shared content, up to the clock."""
    import inspect

    from flwr.app import ConfigRecord, MessageType, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from simulation.compat import flower
    from simulation.hospital_grid import BlockFedAvg
    from tests.inprocess_grid import allow_messages

    allow_messages()
    assert "self._construct_messages(" in inspect.getsource(FedAvg.configure_train)
    content = RecordDict({"config": ConfigRecord({"lr": 0.1})})
    nodes = [5, 2, 9]
    theirs = FedAvg()._construct_messages(content, nodes, MessageType.TRAIN)
    ours = BlockFedAvg()._construct_messages(content, nodes, MessageType.TRAIN)
    assert len(ours) == len(theirs) == 3
    for mine, flowers in zip(ours, theirs, strict=True):
        assert set(vars(mine)) == set(vars(flowers))
        a, b = dict(vars(mine.metadata)), dict(vars(flowers.metadata))
        assert a.pop("_created_at") == pytest.approx(b.pop("_created_at"), abs=5.0)
        assert a == b
        assert mine.content is content and not mine.has_error()
    assert flower.same_asks(content, [], MessageType.TRAIN) == []


def test_flower_records_keep_their_items_where_fill_unchecked_writes():
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    from simulation.compat import flower

    metrics = flower.fill_unchecked(MetricRecord(), {"n": [1, 2]})
    arrays = flower.fill_unchecked(ArrayRecord(), {"w": Array(np.ones(2))})
    records = flower.fill_unchecked(RecordDict(), {"metrics": metrics, "arrays": arrays})
    assert metrics == MetricRecord({"n": [1, 2]})
    assert records.metric_records["metrics"]["n"] == [1, 2]
    assert records.object_id == RecordDict({"metrics": metrics, "arrays": arrays}).object_id


def test_flower_arrays_hold_npy_bytes_and_serialise_under_their_qualname():
    from flwr.app import Array, ArrayRecord

    from simulation.compat import flower

    row = np.arange(6, dtype=np.float32).reshape(2, 3)
    theirs = Array.from_numpy_ndarray(row)
    assert {"dtype", "shape", "stype", "data"} <= set(vars(theirs))
    assert theirs.stype == flower.NUMPY_STYPE
    assert theirs.data == flower.npy_header("float32", (2, 3)) + row.tobytes()
    fields = {k: vars(theirs)[k] for k in ("dtype", "shape", "stype", "data")}
    ours = flower.row_array(fields, row)
    assert ours.deflate() == theirs.deflate()  # the class name written is "Array"
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    swapped = flower.fast_loading(ArrayRecord({"w": theirs}))
    assert type(swapped["w"]) is flower.NpyArray
    np.testing.assert_array_equal(swapped["w"].numpy(), row)
    np.testing.assert_array_equal(flower.cached_row(ours), row)


def test_fedavg_still_has_the_private_logging_and_default_aggregation_we_use():
    from flwr.serverapp.strategy import FedAvg

    from simulation.compat import flower

    params = inspect.signature(FedAvg._check_and_log_replies).parameters
    assert list(params) == ["self", "replies", "is_train", "validate"]
    assert FedAvg().train_metrics_aggr_fn is flower.DEFAULT_METRICS_AGGREGATION


def test_flowers_in_memory_grid_polls_every_pull_interval():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    assert inspect.signature(InMemoryGrid.__init__).parameters["pull_interval"].default == 0.1
    assert "self.pull_interval" in inspect.getsource(InMemoryGrid.send_and_receive)


def test_flowers_client_side_dp_sends_the_norm_under_the_key_we_read_and_clips_as_we_do():
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    from simulation.compat import flower

    source = inspect.getsource(DifferentialPrivacyClientSideFixedClipping.configure_train)
    assert "KEY_CLIPPING_NORM" in source and flower.CLIPPING_NORM_KEY == "clipping_norm"
    start = [np.zeros(4, dtype=np.float32)]
    new = [np.full(4, 3.0, dtype=np.float32)]  # an update of L2 norm 6
    flower.clip_update(new, start, 1.5)
    assert np.linalg.norm(new[0] - start[0]) == pytest.approx(1.5, rel=1e-6)


def test_flowers_legacy_secagg_still_reads_the_state_we_write():
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    from simulation.compat import flower

    assert list(inspect.signature(GridClientProxy.__init__).parameters) == [
        "self",
        "node_id",
        "grid",
        "run_id",
    ]
    assert list(inspect.signature(fitres_to_recorddict).parameters) == ["fitres", "keep_input"]
    workflow = inspect.getsource(inspect.getmodule(SecAggPlusWorkflow))
    assert "MAIN_PARAMS_RECORD" in workflow and "Key.CURRENT_ROUND" in workflow
    assert (MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key.CURRENT_ROUND) == (
        "config",
        "parameters",
        "current_round",
    )
    assert flower.SECAGG_CONFIGS_KEY == "secaggplus_configs"


def test_flower_still_builds_its_backend_and_poll_where_we_swap_them():
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation import run_simulation
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from simulation.compat import flower

    # If a Flower upgrade moves these, installed() would silently stop working.
    assert "from .backend.raybackend import RayBackend" in inspect.getsource(vce_api.start_vce)
    assert "add_messages_to_queue" in vce_api.run_api.__code__.co_names
    assert list(inspect.signature(vce_api.add_messages_to_queue).parameters) == list(
        inspect.signature(flower.add_messages_to_queue).parameters
    )
    assert "InMemoryGrid(" in inspect.getsource(inspect.getmodule(run_simulation))
    # What the subclasses override or read.
    for name in ("build", "process_message", "num_workers"):
        assert hasattr(raybackend.RayBackend, name), name
    init = inspect.getsource(raybackend.RayBackend.__init__)
    for name in ("client_resources", "actor_kwargs", "pool", "app_fn"):
        assert f"self.{name}" in init, name
    assert list(inspect.signature(ClientAppActor.run).parameters)[:4] == [  # a Ray actor's
        "client_app_fn",
        "message",
        "cid",
        "context",
    ]
    for name in ("pool", "actors_capacity", "num_actors"):
        assert f"self.{name}" in inspect.getsource(BasicActorPool), name
    # The pool adopts actors started early by appending to ``pool`` and counting them,
    # and stops every actor in ``pool`` through its ``terminate`` (``HospitalActor``'s).
    assert "self.pool.append(self.create_actor_fn())" in inspect.getsource(
        BasicActorPool.add_actors_to_pool
    )
    assert "actor.terminate.remote()" in inspect.getsource(BasicActorPool.terminate_all_actors)
    original = raybackend.RayBackend, vce_api.add_messages_to_queue, InMemoryGrid.push_messages
    with flower.installed():
        assert raybackend.RayBackend is flower.affinity_backend()
        assert vce_api.add_messages_to_queue is flower.add_messages_to_queue
        assert InMemoryGrid.push_messages is not original[2]
    assert (
        raybackend.RayBackend,
        vce_api.add_messages_to_queue,
        InMemoryGrid.push_messages,
    ) == original


def test_run_simulation_is_still_there_deprecated_by_a_log_line_only():
    import flwr.simulation

    simulation_module = sys.modules["flwr.simulation.run_simulation"]
    params = inspect.signature(flwr.simulation.run_simulation).parameters
    assert {"server_app", "client_app", "num_supernodes", "backend_config"} <= set(params)
    source = inspect.getsource(flwr.simulation.run_simulation)
    assert "is deprecated" in source and "warnings.warn" not in source
    # The plan's first step calls the in-process entry point run_simulation wraps.
    assert hasattr(simulation_module, "_run_simulation")


# ------------------------------------------------------------ Ray canary
def test_ray_still_reads_the_environment_variables_we_set():
    import ray._private.ray_constants as constants
    from ray._private.accelerators import RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR

    from simulation.compat import ray

    assert RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR in ray.ENVIRONMENT
    assert '"RAY_DEDUP_LOGS"' in inspect.getsource(constants)
    assert set(ray.ENVIRONMENT) == {"RAY_DEDUP_LOGS", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR}


def test_ray_init_still_builds_the_node_whose_start_up_we_trim():
    import ray._private.node as node
    import ray._private.ray_constants as constants
    import ray._private.worker as worker

    from simulation.compat import ray

    # ray.init looks the class up at call time, so swapping the module attribute reaches it.
    assert "ray._private.node.Node(" in inspect.getsource(worker.init)
    heads = inspect.getsource(node.Node.start_head_processes)
    assert "self.start_monitor()" in heads and "self.start_api_server(" in heads
    assert "self.start_log_monitor()" in inspect.getsource(node.Node.start_ray_processes)
    api = inspect.signature(node.Node.start_api_server).parameters
    assert list(api) == ["self", "include_dashboard", "raise_on_failure"]
    assert all(p.kind is p.KEYWORD_ONLY for n, p in api.items() if n != "self")
    assert "return self._session_dir" in inspect.getsource(node.Node.get_session_dir_path)
    assert "self._session_dir = os.path.join(" in inspect.getsource(node.Node._init_temp)
    assert 'f"session_{date_str}_{os.getpid()}"' in inspect.getsource(node.Node.__init__)
    assert "get_default_ray_temp_dir()" in inspect.getsource(node.Node._init_temp)
    assert ray.SESSION_LATEST == constants.SESSION_LATEST
    init = inspect.signature(node.Node.__init__).parameters
    assert list(init)[:3] == ["self", "ray_params", "head"] and "connect_only" in init
    assert issubclass(ray.lean_node_class(), node.Node)


def test_only_the_given_ray_session_folder_is_removed(tmp_path):
    from simulation.compat import ray

    ours, theirs = tmp_path / "session_2026_1", tmp_path / "session_2026_2"
    for session in (ours, theirs):
        (session / "logs").mkdir(parents=True)
    latest = tmp_path / ray.SESSION_LATEST
    latest.symlink_to(theirs)
    ray.remove_session(ours)
    assert not ours.exists() and theirs.exists() and latest.is_symlink()  # theirs stays newest
    latest.unlink()
    latest.symlink_to(theirs)
    ray.remove_session(theirs)
    assert not theirs.exists() and not latest.is_symlink()
    for wrong in (tmp_path, latest):
        with pytest.raises(ValueError, match="not a Ray session folder"):
            ray.remove_session(wrong)


# ------------------------------------------------------------ Streamlit canary
def test_streamlit_still_wraps_each_element_in_the_class_the_app_styles():
    import streamlit

    from pages._streamlit_compat import ELEMENT_CLASS, HIDE_EMPTY_FRAMES

    bundle = Path(streamlit.__file__).parent / "static" / "static" / "js"
    scripts = [p.read_text(errors="ignore") for p in bundle.glob("index.*.js")]
    assert any(f"`{ELEMENT_CLASS}`" in script for script in scripts), "Streamlit renamed it"
    assert f".{ELEMENT_CLASS}:has(" in HIDE_EMPTY_FRAMES


# ------------------------------------------------------------ DuckDB canary
def test_duckdb_still_says_lock_when_another_process_holds_the_file(tmp_path):
    import duckdb

    from healthsync.runs.duckdb_compat import is_lock_conflict

    path = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for read_only in (False, True):
            with pytest.raises((duckdb.IOException, duckdb.ConnectionException)) as caught:
                duckdb.connect(str(path), read_only=read_only)
            assert is_lock_conflict(caught.value), caught.value
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    blocks = tmp_path / "blocks"  # a directory (whose name holds "lock"): not worth waiting for
    blocks.mkdir()
    with pytest.raises(duckdb.IOException) as caught:
        duckdb.connect(str(blocks))
    assert not is_lock_conflict(caught.value), caught.value


def test_flowers_ray_backend_starts_ray_only_when_nobody_has_and_as_we_do():
    """A cold run starts Ray before Flower's backend (``ray.init_like_flower``); Flower must
    then leave it alone, and the arguments we mirror must still be the ones it passes."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    source = inspect.getsource(raybackend.RayBackend.init_ray)
    assert "if not ray.is_initialized():" in source
    assert 'ray_init_args.setdefault("include_dashboard", False)' in source
    assert 'runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}' in source


def test_our_actor_runs_a_message_as_flowers_client_app_actor_does():
    """``HospitalActor`` replaces Flower's ``ClientAppActor`` (whose module costs each actor
    0.5 s of imports): the same reply, an app's error wrapped the same way, a failure to load
    the app passed on as it is."""
    from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
    from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor

    from simulation.compat import actor as early

    def app(message, context):
        if message == "fail":
            raise ValueError("no such hospital")
        return f"reply to {message}"

    def unloadable():
        raise LoadClientAppError("no app here")

    class Theirs(VirtualClientEngineActor):
        pass

    context = object()
    for loader, message in ((lambda: app, "ask"), (lambda: app, "fail"), (unloadable, "ask")):
        outcomes = []
        for actor in (early.HospitalActor(), Theirs()):
            try:
                outcomes.append(actor.run(loader, message, "7", context))
            except (ClientAppException, LoadClientAppError) as err:
                outcomes.append((type(err), str(err), type(err.__cause__)))
        assert outcomes[0] == outcomes[1], outcomes
    assert early.HospitalActor().run(lambda: app, "ask", "7", context) == (
        "7",
        "reply to ask",
        context,
    )


def test_ray_init_imports_nothing_once_its_modules_are_loaded():
    """A cold run's main thread starts Ray while another thread imports; ``ray.init``
    must import no module there (``ray.load_init_modules`` loads them first)."""
    script = """
import sys
import ray
from simulation import launch
from simulation.compat import ray as ray_compat
ray_compat.set_environment()
with ray_compat.lean_local_start():
    ray_compat.load_init_modules()
    before = set(sys.modules)
    ray_compat.init_like_flower(launch.backend_config(None))
    print(sorted(set(sys.modules) - before))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_a_local_heads_workers_import_the_client_app_before_their_first_task():
    """``head_system_config``: Ray must still take the raylet settings we pass and its
    workers must import ``preload`` as they start; the lean head's own wait must see its
    raylet register (were its question to GCS wrong, every start would wait 30 s)."""
    script = """
import sys
import ray
from simulation import launch
from simulation.compat import ray as ray_compat
ray_compat.set_environment()
waited = []
wait = ray_compat.wait_until_registered
ray_compat.wait_until_registered = lambda *args: waited.append(wait(*args)) or waited[-1]

@ray.remote(num_cpus=1)
def loaded():
    import sys
    return sorted(name for name in ("simulation.client_app", "torch") if name in sys.modules)

with ray_compat.lean_local_start():
    ray_compat.init_like_flower(launch.backend_config(None), preload=launch.WORKER_PRELOAD)
    print(waited, ray.get([loaded.remote() for _ in range(2)]))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = ["simulation.client_app", "torch"]
    assert out.stdout.strip().splitlines()[-1] == f"[True] {[loaded, loaded]!r}", out.stdout


def _breaks_on_import(monkeypatch, module: str, message: str) -> None:
    """From now on (and until the test ends), importing ``module`` raises ``RuntimeError``;
    it and ``simulation.preload`` are imported afresh."""
    import importlib.abc

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == module:
                raise RuntimeError(message)
            return None

    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    for name in ("simulation.preload", module):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_the_workers_preload_leaves_any_error_of_the_client_app_to_its_first_message(
    monkeypatch,
):
    """Ray ends a worker whose preload raises anything but ``ImportError``; ours raises
    nothing, and the client app's import fails again where Flower loads it."""
    from simulation import launch

    assert launch.WORKER_PRELOAD == ("simulation.preload",)
    _breaks_on_import(monkeypatch, "simulation.client_app", "a bug at import time")
    importlib.import_module("simulation.preload")  # raises nothing
    assert "simulation.client_app" not in sys.modules
    with pytest.raises(RuntimeError, match="a bug at import time"):
        importlib.import_module("simulation.client_app")


def test_the_workers_preload_leaves_an_error_of_the_training_side_to_its_first_message(
    monkeypatch,
):
    """The client app imports, but its training side (PyTorch, block training) fails:
    the preload raises nothing, and the error comes again where a message needs it."""
    from simulation import client_app

    _breaks_on_import(monkeypatch, "healthsync.ml.blocks", "a broken training module")
    client_app.load_training.cache_clear()
    try:
        importlib.import_module("simulation.preload")  # raises nothing
        with pytest.raises(RuntimeError, match="a broken training module"):
            client_app.load_training()
    finally:
        client_app.load_training.cache_clear()


def test_ray_still_waits_for_its_raylet_after_starting_the_processes_we_wait_on():
    """The lean head waits for its raylet's registration inside ``start_ray_processes``; Ray's
    own wait (a question to GCS, then one a second) must still come after that call."""
    import ray._private.node as node

    init = inspect.getsource(node.Node.__init__)
    started = init.index("self.start_ray_processes()")
    assert started < init.index("ray._private.services.get_node(", started)
    assert "def start_ray_processes(self)" in inspect.getsource(node.Node)


def test_a_lean_head_asks_gcs_until_its_raylet_registered(monkeypatch):
    from simulation.compat import ray as ray_compat

    class Gcs:
        def __init__(self, answers):
            self.answers, self.asked = list(answers), []

        def get_all_node_info(self, **kwargs):
            self.asked.append(kwargs)
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    class Raylet:
        def __init__(self, exits_after: int | None = None):
            self.polls, self.exits_after = 0, exits_after

        def poll(self):
            self.polls += 1
            return 1 if self.exits_after is not None and self.polls > self.exits_after else None

    from ray.exceptions import RpcError

    monkeypatch.setattr(ray_compat, "REGISTRATION_POLL", 0.001)
    node_id = "ab" * 28
    gcs = Gcs([{}, RpcError("GCS still starting"), {}, {b"id": "alive"}])
    assert ray_compat.wait_until_registered(gcs, node_id, Raylet())
    assert len(gcs.asked) == 4
    (selector,) = gcs.asked[0]["node_selectors"]
    assert selector.node_id == bytes.fromhex(node_id)

    # A raylet that exited: no more questions, Ray's own wait reports it.
    dead = Gcs([{}] * 10_000)
    assert not ray_compat.wait_until_registered(dead, node_id, Raylet(exits_after=2))
    assert len(dead.asked) == 2
    # An error that is not Ray's (a changed API) is not taken for "not yet".
    with pytest.raises(TypeError):
        ray_compat.wait_until_registered(Gcs([TypeError("no such keyword")]), node_id, Raylet())

    monkeypatch.setattr(ray_compat, "REGISTRATION_LIMIT", 0.05)
    never = Gcs([{}] * 10_000)
    assert not ray_compat.wait_until_registered(never, node_id, Raylet())  # Ray's own wait decides
