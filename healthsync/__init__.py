"""HealthSync: privacy-preserving federated learning for hospitals.

The library never imports Streamlit; the app (``app.py``, ``pages/``) and the
Flower wiring (``simulation/``) stand on top of it.
"""

__version__ = "0.1.0"
