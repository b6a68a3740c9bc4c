-- An event log (with its read models) as Capsule wrote it before its events were chained:
-- one database backup and one restore, dumped with sqlite3's .dump.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE events (
	position INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	stream_id TEXT NOT NULL, 
	version INTEGER NOT NULL, 
	type TEXT NOT NULL, 
	schema_version INTEGER NOT NULL, 
	data JSON NOT NULL, 
	metadata JSON NOT NULL, 
	recorded_at DATETIME NOT NULL, 
	CONSTRAINT events_stream_id_version_key UNIQUE (stream_id, version), 
	CONSTRAINT events_version_check CHECK (version >= 1), 
	CONSTRAINT events_schema_version_check CHECK (schema_version >= 1)
);
INSERT INTO events VALUES(1,'backup-20261206032826-b2420d43',1,'BackupRequested',1,'{"job_id": "20261206032826-b2420d43", "kind": "database", "source": "/srv/shop/data/pos.db", "full": false, "tags": [], "plan": ["store", "commit"]}','{"actor": "person:root@vm", "correlation_id": "20261206032826-b2420d43", "causation_id": null}','2026-12-06 03:28:26.018515');
INSERT INTO events VALUES(2,'backup-20261206032826-b2420d43',2,'StepStarted',1,'{"job_id": "20261206032826-b2420d43", "step": "store", "attempt": 1, "worker": "vm:20629:e297fb", "lease_expires_at": "2026-12-06T03:29:26.034375Z"}','{"actor": "system:worker:vm:20629:e297fb", "correlation_id": "20261206032826-b2420d43", "causation_id": null}','2026-12-06 03:28:26.034458');
INSERT INTO events VALUES(3,'backup-20261206032826-b2420d43',3,'StepCompleted',1,'{"job_id": "20261206032826-b2420d43", "step": "store", "attempt": 1, "result": {"stored": {"source": "/srv/shop/data/pos.db", "taken_at": "2026-12-06T03:28:26.066782Z", "entry": {"path": "pos.db", "type": "file", "size": 4198400, "mode": 420, "mtime_ns": 1796527704571771663, "inode": 2180549, "sha256": "1c294db62229b0dc80ceb7506d9f765b6acabef146ba96eeb7b2d4276ab7e003", "target": null, "blobs": [], "blob_lists": ["1b2ac44e2c2bc116fd3211cc727bbc1820b440b5f3e8e2c21c75eac1ca78fa02", "aa2c6dea48131d2741f0baf73198d13eeebb5fc3a093f3fbb94705c24d6fe973", "696cd9933e66a9055de75e364f2e23a4cae819055719a46707aef7195d60e3b0", "0e1aa734ced5004a98bec2fddd430759fa7c2cb266c42e9a24819e0027310592", "d36698dc6f0a2d34305b84f3e887b995dbb18530e93695a5ce426dfb3b46edd4"], "sqlite": {"page_size": 4096, "page_count": 1025, "journal_mode": "wal", "pages_per_chunk": 1}}, "parent": null, "blobs": 1025, "new_blobs": 1025, "new_bytes": 4198400, "stored_bytes": 1806410, "changed_chunks": null, "seconds": 0.63, "snapshot_window_seconds": 0.074}}}','{"actor": "system:worker:vm:20629:e297fb", "correlation_id": "20261206032826-b2420d43", "causation_id": null}','2026-12-06 03:28:26.708381');
INSERT INTO events VALUES(4,'backup-20261206032826-b2420d43',4,'StepStarted',1,'{"job_id": "20261206032826-b2420d43", "step": "commit", "attempt": 1, "worker": "vm:20629:e297fb", "lease_expires_at": "2026-12-06T03:29:26.751694Z"}','{"actor": "system:worker:vm:20629:e297fb", "correlation_id": "20261206032826-b2420d43", "causation_id": null}','2026-12-06 03:28:26.751765');
INSERT INTO events VALUES(5,'backup-20261206032826-b2420d43',5,'StepCompleted',1,'{"job_id": "20261206032826-b2420d43", "step": "commit", "attempt": 1, "result": {"snapshot_id": "2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7", "kind": "database", "source": "/srv/shop/data/pos.db", "totals": {"files": 1, "bytes": 4198400, "blobs": 1025, "new_blobs": 1025, "new_bytes": 4198400, "stored_bytes": 1806410, "changed_chunks": null, "read_files": null, "warnings": 0, "duration_seconds": 0.63}}}','{"actor": "system:worker:vm:20629:e297fb", "correlation_id": "20261206032826-b2420d43", "causation_id": null}','2026-12-06 03:28:26.829259');
INSERT INTO events VALUES(6,'backup-20261206032826-b2420d43',6,'BackupCompleted',1,'{"job_id": "20261206032826-b2420d43", "snapshot_id": "2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7"}','{"actor": "system:worker:vm:20629:e297fb", "correlation_id": "20261206032826-b2420d43", "causation_id": null}','2026-12-06 03:28:26.829259');
INSERT INTO events VALUES(7,'restore-20261206032827-55f32a0e',1,'RestoreRequested',2,'{"job_id": "20261206032827-55f32a0e", "snapshot_id": "2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7", "target": "/srv/restored", "force": false, "check": false, "include": [], "plan": ["restore"]}','{"actor": "person:root@vm", "correlation_id": "20261206032827-55f32a0e", "causation_id": null}','2026-12-06 03:28:27.932598');
INSERT INTO events VALUES(8,'restore-20261206032827-55f32a0e',2,'StepStarted',1,'{"job_id": "20261206032827-55f32a0e", "step": "restore", "attempt": 1, "worker": "vm:20684:267acc", "lease_expires_at": "2026-12-06T03:29:27.951741Z"}','{"actor": "system:worker:vm:20684:267acc", "correlation_id": "20261206032827-55f32a0e", "causation_id": null}','2026-12-06 03:28:27.951817');
INSERT INTO events VALUES(9,'restore-20261206032827-55f32a0e',3,'StepCompleted',1,'{"job_id": "20261206032827-55f32a0e", "step": "restore", "attempt": 1, "result": {"snapshot_id": "2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7", "files": 1, "bytes": 4198400, "restored": [{"path": "/srv/restored/pos.db", "size": 4198400, "sha256": "1c294db62229b0dc80ceb7506d9f765b6acabef146ba96eeb7b2d4276ab7e003"}]}}','{"actor": "system:worker:vm:20684:267acc", "correlation_id": "20261206032827-55f32a0e", "causation_id": null}','2026-12-06 03:28:28.210989');
INSERT INTO events VALUES(10,'restore-20261206032827-55f32a0e',4,'RestoreCompleted',1,'{"job_id": "20261206032827-55f32a0e", "result": {"snapshot_id": "2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7", "files": 1, "bytes": 4198400, "restored": [{"path": "/srv/restored/pos.db", "size": 4198400, "sha256": "1c294db62229b0dc80ceb7506d9f765b6acabef146ba96eeb7b2d4276ab7e003"}]}}','{"actor": "system:worker:vm:20684:267acc", "correlation_id": "20261206032827-55f32a0e", "causation_id": null}','2026-12-06 03:28:28.210989');
CREATE TABLE jobs (
	job_id TEXT NOT NULL, 
	job_type TEXT NOT NULL, 
	kind TEXT, 
	source TEXT NOT NULL, 
	snapshot_id TEXT, 
	status TEXT NOT NULL, 
	current_step TEXT, 
	attempt INTEGER, 
	progress_done BIGINT, 
	progress_total BIGINT, 
	queued_behind TEXT, 
	requested_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	error TEXT, 
	warnings BIGINT, 
	warning_items TEXT, 
	actor TEXT NOT NULL, 
	correlation_id TEXT NOT NULL, 
	last_position BIGINT NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (job_id)
);
INSERT INTO jobs VALUES('20261206032826-b2420d43','backup','database','/srv/shop/data/pos.db','2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7','completed',NULL,NULL,NULL,NULL,NULL,'2026-12-06 03:28:26.018515','2026-12-06 03:28:26.034458','2026-12-06 03:28:26.829259',NULL,NULL,NULL,'person:root@vm','20261206032826-b2420d43',6,'2026-12-06 03:28:26.829259');
INSERT INTO jobs VALUES('20261206032827-55f32a0e','restore',NULL,'/srv/restored','2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7','completed',NULL,NULL,NULL,NULL,NULL,'2026-12-06 03:28:27.932598','2026-12-06 03:28:27.951817','2026-12-06 03:28:28.210989',NULL,NULL,NULL,'person:root@vm','20261206032827-55f32a0e',10,'2026-12-06 03:28:28.210989');
CREATE TABLE snapshots (
	snapshot_id TEXT NOT NULL, 
	job_id TEXT NOT NULL, 
	kind TEXT, 
	source TEXT NOT NULL, 
	time DATETIME NOT NULL, 
	files BIGINT, 
	bytes BIGINT, 
	blobs BIGINT, 
	new_blobs BIGINT, 
	new_bytes BIGINT, 
	stored_bytes BIGINT, 
	duration_seconds FLOAT, 
	PRIMARY KEY (snapshot_id)
);
INSERT INTO snapshots VALUES('2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7','20261206032826-b2420d43','database','/srv/shop/data/pos.db','2026-12-06 03:28:26.829259',1,4198400,1025,1025,4198400,1806410,0.63000000000000000444);
CREATE TABLE restore_jobs (
	job_id TEXT NOT NULL, 
	snapshot_id TEXT NOT NULL, 
	target TEXT NOT NULL, 
	force BOOLEAN NOT NULL, 
	"check" BOOLEAN NOT NULL, 
	status TEXT NOT NULL, 
	files BIGINT, 
	bytes BIGINT, 
	safety_copy TEXT, 
	requested_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	error TEXT, 
	PRIMARY KEY (job_id)
);
INSERT INTO restore_jobs VALUES('20261206032827-55f32a0e','2b7f7959b487a994bf398654cd1d967ae31e1eff09a01fb08499a75bb498dbb7','/srv/restored',0,0,'completed',1,4198400,NULL,'2026-12-06 03:28:27.932598','2026-12-06 03:28:28.210989',NULL);
CREATE TABLE projection_checkpoints (
	name TEXT NOT NULL, 
	position BIGINT NOT NULL, 
	PRIMARY KEY (name)
);
INSERT INTO projection_checkpoints VALUES('jobs',10);
INSERT INTO projection_checkpoints VALUES('snapshots',10);
INSERT INTO projection_checkpoints VALUES('restore_jobs',10);
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('events',10);
CREATE INDEX jobs_source_idx ON jobs (source);
CREATE INDEX jobs_queued_behind_idx ON jobs (queued_behind);
CREATE INDEX jobs_requested_at_idx ON jobs (requested_at);
CREATE INDEX jobs_status_idx ON jobs (status);
CREATE INDEX snapshots_time_idx ON snapshots (time);
CREATE INDEX restore_jobs_requested_at_idx ON restore_jobs (requested_at);
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
COMMIT;
