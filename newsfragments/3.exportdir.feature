Exports take dir_uid, dir_gid and dir_mode: the export directory's owner and mode, applied at every start, so a fresh squashed export can be handed to a user.
