# STAND-IN (NOT Slicer): packaging is Slicer's; here only the install rules are exercised.
file(APPEND "${SLICER_STUB_RECORD}" "CPACK ${EXTENSION_NAME}\n")
