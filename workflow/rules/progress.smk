# Filled by the progress stage.
