"""OpenAI-compatible chat server over LoRA adapters: SGLang (GPU) or transformers + peft (CPU).

Modules use relative imports only, so the package works both as `inference_server` (the image) and as
`inference_image.inference_server` (the Functions app reads the manifest contract from here).
"""
