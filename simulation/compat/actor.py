"""The Ray actor that serves a simulation's Flower nodes: Flower's ``ClientAppActor``, lighter.

Part of the compatibility layer (``simulation.compat.flower`` item 7 says what
it relies on). Kept apart, importing no Flower until it runs a message, for
two reasons: a Ray worker that loads it does not import all of
``flwr.simulation`` (0.5 s an actor); and a cold run's main thread can start
the actors (``actors_started_early``) while another thread is importing
Flower, without importing anything itself (two threads importing the same
packages in different orders can deadlock on Python's module locks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any


class HospitalActor:
    """What Flower's ``ClientAppActor`` does: run a message through the ClientApp.

    Its errors are wrapped as Flower wraps them (``ClientAppException``, which
    Flower's backend turns into an error reply); a failure to load the app is
    passed on as it is.
    """

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, client_app_fn: Callable[[], Any], message: Any, cid: str, context: Any) -> tuple:
        """``(cid, reply, context)`` for ``message``, as ``ClientAppActor.run`` returns them."""
        from flwr.clientapp.client_app import ClientAppException, LoadClientAppError

        try:
            out_message = client_app_fn()(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        return cid, out_message, context

    def terminate(self) -> None:
        """Stop this actor (Flower's pool calls it when the simulation ends)."""
        import ray

        ray.actor.exit_actor()


@cache
def remote_actor() -> Any:
    """:class:`HospitalActor` as a Ray actor class (one per process, as Ray expects)."""
    import ray

    return ray.remote(HospitalActor)


_started_early: list[Any] = []  # actors started with Ray, for the next affinity pool


@contextmanager
def actors_started_early(client_resources: dict, count: int) -> Iterator[None]:
    """Start ``count`` actors now; inside, the next affinity backend's pool takes them.

    A cold run starts them as soon as its Ray is up, so that they load
    PyTorch and the client app (1-2 s each) while the run's own process is
    still importing and starting its ServerApp, rather than after. On leaving
    (the simulation over, or failed before it built its backend) any not
    taken are forgotten: they end with the Ray they belong to, and a later
    simulation on another Ray must not take them.
    """
    started = remote_actor().options(**client_resources)
    _started_early[:] = [started.remote() for _ in range(count)]
    try:
        yield
    finally:
        _started_early.clear()


def take_started_early(count: int) -> list[Any]:
    """Up to ``count`` of the actors started early (each is taken once)."""
    taken = _started_early[:count]
    del _started_early[: len(taken)]
    return taken
