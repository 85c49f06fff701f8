"""What happens next, decided in one place: the supervisor, the command handlers, the state they share.

`supervisor.Supervisor` owns the `BeamlineState` and the order of work: commands
from PV putters, timers (refresh, progress, catalogue) and the events handlers
raise all go through it, one handler at a time, off the event loop; it alone
publishes the state to whoever subscribed (the PV groups). A handler
(`commands/`) is plain blocking Python: `(state, command) -> (new state,
Outcome, events)`, through the ports only: no PVs, no caproto, no adapters.
"""
