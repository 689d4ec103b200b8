"""
NFSv4.1 and 4.2 (RFC 8881, RFC 7862, RFC 8276): program 100003 version 4 on
the NFS listener, beside NFSv3.

``const`` and ``codec`` are the wire (COMPOUND, CB_COMPOUND, attributes in
``fattr``); ``server`` serves COMPOUND over the vfs with ``pseudo`` (the
pseudo-filesystem joining the exports), ``clients`` (client records,
sessions, slots, leases), ``state`` (opens, locks, stateids), ``callback``
(the back channel) and ``recovery`` (client records kept in the store and
the grace period after a restart).
"""
