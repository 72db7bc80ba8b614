"""Running a farm: `voicefarm up`, the supervisor and reaper, local services, workers and the doctor."""
