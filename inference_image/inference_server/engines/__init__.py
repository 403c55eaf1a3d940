"""Engines: one interface (`base.Engine`), a GPU engine over SGLang and a CPU engine over transformers + peft."""
