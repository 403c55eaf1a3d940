"""The inference image's build context. `inference_server` inside it is importable from here too, so the
Functions app can share the stdlib-only manifest contract (`inference_image.inference_server.manifest`)."""
