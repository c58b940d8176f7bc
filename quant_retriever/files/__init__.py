"""File and directory helpers shared by the on-disk formats, one concern per module:

============== ==================================================================
module         holds
============== ==================================================================
raw            opening a regular file safely, raw arrays in append-only files,
               their CRC-32 checksums, temporary files, directory fsync
headers        JSON headers: atomic writes and the schema-checked reader
locks          the writer's and readers' ``flock`` files, and the objects this
               process has open for writing
directories    checked path components, creation over an interrupted creation's
               leftovers, saves, atomic replacement and its recovery
============== ==================================================================
"""

from quant_retriever.files.directories import (
    check_new_directory,
    make_temp_dir,
    prepare_new_directory,
    real_directory,
    recover_replacement,
    replace_directory,
    replacement_of,
    write_directory,
)
from quant_retriever.files.headers import Bool, Field, Int, Object, OneOf, read_json, write_json_atomic
from quant_retriever.files.locks import DirectoryLock, OpenObjects, lock_is_free, open_in_process
from quant_retriever.files.raw import (
    append_raw,
    checksum,
    create_temp_file,
    file_checksum,
    file_kind,
    fsync_dir,
    open_file,
    read_raw,
    write_all,
)

__all__ = [
    "Field",
    "Int",
    "Bool",
    "OneOf",
    "Object",
    "read_json",
    "write_json_atomic",
    "open_file",
    "file_kind",
    "read_raw",
    "append_raw",
    "write_all",
    "checksum",
    "file_checksum",
    "create_temp_file",
    "fsync_dir",
    "DirectoryLock",
    "OpenObjects",
    "open_in_process",
    "lock_is_free",
    "real_directory",
    "make_temp_dir",
    "check_new_directory",
    "prepare_new_directory",
    "write_directory",
    "replace_directory",
    "replacement_of",
    "recover_replacement",
]
