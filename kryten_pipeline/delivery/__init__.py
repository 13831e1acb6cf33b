"""Getting a published snapshot onto a reader host: fetched from the Object Store and proven to be the one KV
recorded (``fetch``), installed by the ``follow``/``pull`` agent (``follower``), with the kryten-playlist columns
(``playlist_profile``)."""
