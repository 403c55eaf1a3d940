"""The Gradio chat page for the LoRA chat API: `python -m chat_page --api-url URL --api-key-env VAR --port 7860`.

`client` (HTTP to the chat API, no Gradio), `config` (settings), `page` (the Blocks and its handlers),
`__main__` (launch). Importing the package does not import Gradio.
"""
