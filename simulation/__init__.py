"""Flower wiring for HealthSync: the ServerApp, the ClientApp and their launch on Ray.

This package stands on top of the ``healthsync`` library; the library never
imports it. ``launch`` is the only module that starts Flower or Ray.
"""
