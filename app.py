"""GTP Explorer: `python app.py` serves the app (also the Hugging Face Space entry point).

Gradio reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT from the environment when `launch()`
gets no explicit host/port; this file passes none, so both are honoured.
"""
import threading

from app.layout import CSS, create_app
from gtp import kernels

demo = create_app()

if __name__ == "__main__":
    # Compile the sparsification kernel while the server starts, not in the first request.
    threading.Thread(target=kernels.warm_up, name="gtp-warm-up", daemon=True).start()
    demo.launch(css=CSS)
