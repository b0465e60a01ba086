# Filled by the report stage.
