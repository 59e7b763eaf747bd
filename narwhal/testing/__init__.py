"""Tools to test the real program from outside: a link emulator between validators
(:mod:`narwhal.testing.links`), what a client is served checked for safety
(:mod:`narwhal.testing.outputs`), and a local cluster of validator processes whose links go
through the emulator (:mod:`narwhal.testing.cluster`). Used by tests and by ``bench/``."""
