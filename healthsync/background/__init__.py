"""Processes that outlive the page or command that started them: spawning, private
state files, liveness and locks (``processes``), and the local channel of a
long-lived service, shared by the warm engine and the cohort service (``service``).
"""
