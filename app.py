"""GTP Explorer: `python app.py` serves the app (also the Hugging Face Space entry point).

Gradio reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT from the environment when `launch()`
gets no explicit host/port; this file passes none, so both are honoured.
"""
from app.layout import CSS, create_app

demo = create_app()

if __name__ == "__main__":
    demo.launch(css=CSS)
