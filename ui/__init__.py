"""Shared Streamlit widgets of the dashboard. Only pages and app.py import this; kt_core never does."""
