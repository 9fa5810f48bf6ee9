"""KT Studio: the navigation table and the sidebar. Every page lives in app_pages/."""

import streamlit as st

from ui.sidebar import sidebar

st.set_page_config(page_title="KT Studio", page_icon=":material/transform:", layout="wide")

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/source.py", title="Source", icon=":material/input:"),
    st.Page("app_pages/layers.py", title="Layers", icon=":material/layers:"),
    st.Page("app_pages/dataset.py", title="Dataset", icon=":material/dataset:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/play_circle:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/table_chart:"),
    st.Page("app_pages/experiments.py", title="Experiments", icon=":material/science:"),
]

# Progress bars jump to their new value instead of sliding there: the slide is a CSS transition
# the browser animates at every poll of the live curves (~2.5% of a core per bar, headless Chromium).
st.html("<style>[data-testid='stProgress'] * { transition: none !important; }</style>")

page = st.navigation(PAGES)
sidebar()
page.run()
