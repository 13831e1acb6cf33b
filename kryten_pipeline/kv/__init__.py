"""NATS: the KV store of snapshot records and ``current`` (``store``), the Object Store holding the files
(``object_store``), the embedded nats-server of the defaults (``embedded_nats``) and how NATS failures read
(``nats_errors``)."""
