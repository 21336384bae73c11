"""Processes that outlive the page or command that started them: spawning, state
files, liveness.
"""
