"""The pure core: records, validation, planning and health assessment. No I/O, no clock."""
