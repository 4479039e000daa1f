"""Transfer jobs: the engine following Orthanc's job model, and the job types built on it."""
