"""caproto's asyncio Channel Access server with the changes the IOC needs; `context.serve` runs it.

1. Access by address. Each circuit hands `check_access` a `ClientHost`: the
   host name the client claims, carrying the circuit's peer address, which the
   access rules (`ioc.access`) trust. A write the rules refuse is answered as
   EPICS base answers it (ECA_NOWTACCESS) and leaves one log line naming the
   address (then at most one a minute per address), not a traceback. When
   the host names of the rules resolve to new addresses, every client is sent
   its new access rights.
2. A failed put with completion is answered at once for every client.
   caproto answers it with a CA_PROTO_ERROR message only; libca and caproto's
   sync client take that as the put's failure, but caproto's threading and
   asyncio clients ignore it and wait for their whole timeout. The circuit
   also sends the WRITE_NOTIFY reply carrying the failure status, as EPICS
   base's server does (libca ignores it once the error has closed the put).
   Circuits send without Nagle's delay, as EPICS base's do (asyncio leaves
   it on for caproto's sockets: the second of two replies waited 40 ms).
3. The UDP name-search socket is read until empty at each wake-up, with a
   large receive buffer. asyncio's datagram transport reads one datagram per
   turn of the event loop; with many clients busy each turn is long, searches
   queue up in the kernel, are answered seconds late and, once the socket
   buffer is full, dropped.
4. A client that may not write gains nothing. A message announcing more bytes
   than the largest PV takes (with its headers) closes the circuit before its
   payload is read, as EPICS base does past EPICS_CA_MAX_ARRAY_BYTES (caproto
   would buffer up to 4 GB); so does a message that is not Channel Access.
   An address holds at most `ioc.access.max_circuits_per_host` circuits; near
   the open-file limit (raised to its hard limit at start) the newest circuit
   of the busiest address that may not write is closed, so the consoles that
   may write always get theirs (`CircuitLimits`). What clients cause is logged
   at a bounded rate, one line, no traceback; an accept that fails (EMFILE)
   pauses accepting for a second, said the same way.
5. The audit log (`ioc.audit`): every write, admitted or refused, with the
   client's address, claimed names and outcome, known when the put ends.
6. A client that does not read hurts only itself. caproto's one loop that
   hands every circuit its monitor updates waited for room in a full circuit
   queue: one such client stopped every monitor of every client. A circuit's
   queue (`UpdateQueue`) takes an update without waiting; past its limit an
   update replaces the newest of its monitor still waiting (EPICS base
   coalesces a slow client's updates too). A send still waiting after
   `SEND_SECONDS` (the socket's buffers full: the client reads nothing)
   closes the circuit. A circuit sends what waits in its queue at once, in
   one write (caproto's waits up to 10 ms an update for more, a task and a
   timer each, and logs each batch it sends late: a thousand clients filled
   the log) and keeps `UPDATE_BACKLOG` updates per monitor (caproto 1,000,
   sent or not, as long as the monitor lives).
7. A circuit holds at most `Context.max_channels` channels and
   `SUBSCRIPTIONS_PER_CIRCUIT` monitors: asking for more closes it, said in
   one line (each channel or monitor costs ~0.5 kB and the monitors CPU). It
   reads `COMMANDS_QUEUED` commands ahead of those it answers (caproto
   10,000, ~3 kB each): the client waits, as TCP makes it.
8. Monitor updates cost little, and hold up no other circuit's reply. caproto
   builds each update anew for every monitor and hands it to the circuit's
   task, whose send waits a turn of the event loop: a command's Status and
   Busy with 100 circuits watching cost ~40 ms, which its own put waited for;
   1,000 circuits watching Status made a command take 0.5 s and searches
   1.6 s. Here (`fanout.py`) an update is encoded once per data type and
   count, and a circuit whose client keeps up is written at once, all its
   updates in one write, `FANOUT_SLICE` of writing a turn of the event loop,
   after one turn that lets a put's reply woken with them go first; a client
   that lags gets them through its queue (note 6). Before a put's reply, its
   circuit is sent its updates waiting or on their way: a client monitoring
   Status on the circuit it puts on (libca shares one) has the outcome when
   the put completes. A send writes at once when the socket has room.

These are subclasses of caproto's `VirtualCircuit` (`circuit.Circuit`) and
`Context` (`context.Context`) of `caproto.asyncio.server`; they override
`recv`, `_process_command`, `_command_queue_iteration`, `_start_write_task`,
`send`, `_send_buffers`, `subscription_queue_loop` (both), `_on_disconnect`,
`tcp_handler`, `run` and `_create_broadcaster_transport`,
as of caproto 1.3, and set no private attribute. A circuit replaces three
objects caproto's constructor makes, as caproto's server expects of its
subclasses: `command_queue` (shorter: each command read holds ~3 kB of what
was read with it, and caproto reads up to 10,000 ahead), `subscription_queue`
(caproto's asyncio queue waits when full: there is no other way to take an
update without waiting) and `unexpired_updates` (`Backlogs`: caproto sizes
each monitor's backlog from its PV, 1,000 by default).

- `circuit.py`: a client's circuit (notes 1, 2, 4, 5, 6, 7, 8).
- `context.py`: the server that accepts circuits, and `serve` (notes 1, 3, 4, 8).
- `fanout.py`: monitor updates to the circuits that watch them (note 8).
- `limits.py`: the circuits an address may hold, the open-file budget, the
  largest message, the channels and monitors a circuit may hold (notes 4, 7).
- `backlog.py`: a circuit's monitor updates waiting, and each monitor's backlog (note 6).
- `search.py`: the UDP search socket (note 3).
- `refusals.py`: the log line of a refused write (note 1).

`tests/faults/test_access.py`, `test_flood.py` and `test_audit.py` exercise
them.
"""
