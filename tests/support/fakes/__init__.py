"""Test fakes of third-party packages that the test environment does not install.

`tests/support/fakes/cosyvoice` is a FAKE of upstream CosyVoice (FunAudioLLM/CosyVoice): it mirrors the module path and
the call signatures the `cosyvoice` engine adapter uses, records every call, and makes tones instead of speech. Tests
put this directory on `sys.path` (`monkeypatch.syspath_prepend`) so that `import cosyvoice` finds the fake; nothing else
ever should. It contains no upstream code.
"""
