"""Data shaping and Altair charts for the app's pages (no Streamlit): frames in,
charts out, and the texts that explain them.
"""
