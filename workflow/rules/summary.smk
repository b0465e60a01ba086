# Filled by the summary stage.
