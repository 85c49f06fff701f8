"""SciCat: the catalogue (`ports.Catalogue`) by the REST API of SciCat's backend, behind a durable queue.

Supported: SciCat's current backend (SciCatProject/backend, the NestJS one), routes under `/api/v3`:
`auth/login` gives a token, sent as an `Authorization: Bearer` header only; `POST datasets` creates a raw
dataset under the pid chosen here; `POST datasets/{pid}/origdatablocks` lists its files. Not supported:
the archived LoopBack backend (backend-v3), which logs in at `Users/login`, takes no Bearer token (it
wants the token in the URL, where access logs and exceptions keep it) and puts its prefix before every
pid, so that the IOC would look its datasets up under pids they do not have and create them again.

Modules: `catalogue` (`ScicatCatalogue`, the port: the queue sent by a thread of its own), `queue` (the
datasets waiting, in SQLite), `bodies` (what SciCat is sent), `client` (the calls), `account` (`--check`).
"""
