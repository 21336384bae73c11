"""Where HealthSync touches a framework beyond its public API: one module per framework.

``flower`` holds every use of Flower 1.42's non-public surface (and the plan for
its deprecation of ``run_simulation``), ``ray`` the Ray settings that only Ray's
own code names. Each says in its docstring what it relies on, and
``tests/test_compat.py`` fails loudly when a new version changes it. Every other
module of ``simulation/`` imports only Flower's and Ray's public names
(``tests/test_compat.py`` checks that too).
"""
