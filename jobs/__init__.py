"""The resumable job machinery the stages share: the run directory (records, manifest, lock) and its I/O."""
