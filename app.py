"""KT Studio: the navigation table and the sidebar. Every page lives in pages/."""

import streamlit as st

from ui.sidebar import sidebar

st.set_page_config(page_title="KT Studio", page_icon=":material/transform:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/source.py", title="Source", icon=":material/input:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/layers:"),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/dataset:"),
    st.Page("pages/train.py", title="Train", icon=":material/play_circle:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_chart:"),
]

page = st.navigation(PAGES)
sidebar()
page.run()
