# Filled by the spectra stage.
