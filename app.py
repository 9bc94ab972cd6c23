"""GTP Explorer: `python app.py` serves the app (also the Hugging Face Space entry point).

Gradio reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT from the environment when `launch()`
gets no explicit host/port; this file passes none, so both are honoured.
"""
import spaces  # noqa: F401  - first, as ZeroGPU asks (a no-op anywhere else)

import threading

from app.core import inference
from app.core.models import DEVICE, ZERO_GPU, preload
from app.ui.layout import create_app, launch_options
from gtp import kernels

if DEVICE.type == "cuda":  # ZeroGPU: the model goes to the GPU at start-up, outside any request
    preload()

demo = create_app()

if __name__ == "__main__":
    # Compile the sparsification kernel while the server starts, not in the first request.
    threading.Thread(target=kernels.warm_up, name="gtp-warm-up", daemon=True).start()
    # The runs a classroom shares and their GMACs, made now (on ZeroGPU, where a GPU call needs
    # a visitor's request, the runs by the first student who asks: `app.core.classroom`).
    threading.Thread(target=inference.warm_up, args=(not ZERO_GPU,), name="gtp-examples", daemon=True).start()
    demo.launch(**launch_options())   # the page, and the MCP server at /gradio_api/mcp/
