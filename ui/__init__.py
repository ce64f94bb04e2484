"""The Streamlit page (`make ui`): prompt, settings, live progress, results and history.

`app.py` is the thin Streamlit script; the logic it uses is plain Python, testable without a browser:
`logic` (formatting, ETA, validation, model choice), `media` (audio encoding, plots, uploads) and
`backend` (the one adapter to the project's client library).
"""
