"""Contract tests: each port's behaviour that the handlers rely on, asserted alike on its fake
(tests/fakes/ports.py) and on its real adapter where that one runs here (the file schedule, the
registry, the local DM, the built-in transfer engine, SMTP against a server on 127.0.0.1).

A test takes a `case` fixture parametrized over [fake, real]; what only one of them can be asked to do
(put a file in the transfer's record, refuse an address) is a method of the case, the assertions are shared.
"""
