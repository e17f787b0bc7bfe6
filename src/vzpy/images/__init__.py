"""The on-disk checkpoint format (docs/image-format.md).

Resource modules declare their record types with ``register_record`` and
write and read them through ``ImageWriter`` / ``ImageReader``; nothing
outside this package calls msgpack on image data.
"""

from vzpy.images.envelope import FORMAT_MAJOR, FORMAT_MINOR, MAGIC
from vzpy.images.image import INVENTORY_NAME, ImageReader, ImageWriter
from vzpy.images.pages import PAGE_SIZE, PE_PARENT, PE_PRESENT, PageReader, PageWriter, Run
from vzpy.images.schema import RECORDS, Field, RecordType, SchemaError, register_record

__all__ = [
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "INVENTORY_NAME",
    "MAGIC",
    "PAGE_SIZE",
    "PE_PARENT",
    "PE_PRESENT",
    "RECORDS",
    "Field",
    "ImageReader",
    "ImageWriter",
    "PageReader",
    "PageWriter",
    "RecordType",
    "Run",
    "SchemaError",
    "register_record",
]
