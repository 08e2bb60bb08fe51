//! [`Can`] for [`EmbeddedCan`]: each operation a read of the database, a
//! blob transfer, or a write queued to the writer.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream;
use futures::StreamExt;

use super::assembly::FeederEnd;
use super::folders::FolderSyncs;
use super::objects::ObjectStats;
use super::ranges::{self, Outboard};
use super::resume::{PartialAsset, PartialStats};
use super::schema::{self, Place};
use super::writer::Write;
use super::{blocking, pushed, read_packed, unpack, without_panics, EmbeddedCan, Unpacked};
use super::{segments, subscription};
use crate::asset::{
    meta_text_bytes, AssetHash, Bundle, MetaEdit, MetaUpdate, Summary, VerifiedBundle,
};
use crate::can::{
    write_ranges_whole, ByteStream, Can, CanError, Change, ChangePage, EventStream, GroupStream,
    Page, Pulled, Pushed, PushedBatch, RangesWritten, SinceCursor, StoreStats,
};
use crate::pb;

#[async_trait]
impl Can for EmbeddedCan {
    async fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> Result<Page<Summary, AssetHash>, CanError> {
        let db = self.db.clone();
        let index_damaged = self.writer.index_damaged();
        blocking(move || {
            // A damaged page of the index is named as such; the keys past
            // it can still be listed. From now on the writer checks where
            // each write goes before it writes.
            without_panics(|| schema::read_page_by_hash(&db, after, limit)).unwrap_or_else(|why| {
                index_damaged.store(true, std::sync::atomic::Ordering::Release);
                Err(CanError::DamagedIndex { after, why })
            })
        })
        .await
    }

    async fn list_since(
        &self,
        since: i64,
        after: Option<SinceCursor>,
        limit: usize,
    ) -> Result<Page<Summary, SinceCursor>, CanError> {
        let db = self.db.clone();
        blocking(move || schema::read_page_since(&db, since, after, limit)).await
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangePage, CanError> {
        let db = self.db.clone();
        let changes = blocking(move || schema::read_changes_after(&db, after, limit)).await?;
        let next_after = changes.last().map_or(after, |(change, _)| change.seq);
        Ok(ChangePage {
            changes: changes
                .into_iter()
                .map(|(change, summary)| Change {
                    seq: change.seq,
                    kind: change.kind,
                    summary,
                })
                .collect(),
            next_after,
            store_id: self.store_id,
        })
    }

    async fn pull(&self, hashes: &[AssetHash]) -> Result<Pulled, CanError> {
        let db = self.db.clone();
        let asked = hashes.to_vec();
        let segments = self.segments.clone();
        let found = blocking(move || {
            let found = schema::read_many(&db, &asked)?;
            // The packed values are read together: in object storage, their
            // ranged `GET`s run at once (`SegmentReader::read_many`).
            let packed: Vec<segments::Location> = found
                .iter()
                .filter_map(|found| match found {
                    Some((_, Place::Packed(location))) => Some(*location),
                    _ => None,
                })
                .collect();
            let mut packed = match &segments {
                Some(segments) if !packed.is_empty() => segments.read_many(&packed),
                _ => Vec::new(),
            }
            .into_iter();
            found
                .into_iter()
                .zip(&asked)
                .map(|(found, hash)| {
                    found
                        .map(|(record, place)| {
                            let read = match place {
                                Place::Packed(_) => packed.next(),
                                _ => None,
                            };
                            Ok((record, unpack(hash, place, read)?))
                        })
                        .transpose()
                })
                .collect::<Result<Vec<_>, CanError>>()
        })
        .await?;
        let mut pulled = Pulled::default();
        for (hash, found) in hashes.iter().zip(found) {
            let Some((record, place)) = found else {
                pulled.missing.push(*hash);
                continue;
            };
            let data = match place {
                Unpacked::Bytes(data) => data,
                // Damage fsck names; the other assets of the pull go on.
                Unpacked::Lost => {
                    pulled.missing.push(*hash);
                    continue;
                }
                Unpacked::File => match self.blobs.read_all(hash, record.size).await {
                    Ok(data) => data,
                    Err(CanError::NotFound(_)) => {
                        pulled.missing.push(*hash);
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            pulled.bundles.push(Bundle {
                hash: *hash,
                data,
                meta: record.meta,
            });
        }
        Ok(pulled)
    }

    async fn push(&self, bundle: Bundle) -> Result<Pushed, CanError> {
        self.check_size(bundle.data.len() as u64)?;
        self.check_meta(
            meta_text_bytes(&bundle.meta),
            bundle.meta.meta_updated_at_ms,
        )?;
        let verified = blocking(move || Ok(bundle.verify()?)).await?;
        let (write, owed) = self.asset_write(verified).await?;
        self.blobs.sync_folders(owed).await?;
        pushed(write.hash(), self.writer.write(write).await)
    }

    /// One transaction for the whole batch: its small assets' bytes, every
    /// record and the log entries commit together, durably, once; before it,
    /// each folder its files entered is synced once. No hash is computed
    /// again: the bundles were verified by whoever made them.
    async fn push_batch(&self, bundles: Vec<VerifiedBundle>) -> Result<PushedBatch, CanError> {
        let mut answers: Vec<Option<Result<Pushed, CanError>>> = Vec::with_capacity(bundles.len());
        let mut writes = Vec::with_capacity(bundles.len());
        let mut owed = FolderSyncs::default();
        for bundle in bundles {
            match self.asset_write(bundle).await {
                Ok((write, owes)) => {
                    answers.push(None);
                    writes.push(write);
                    owed.merge(owes);
                }
                Err(err) => answers.push(Some(Err(err))),
            }
        }
        self.blobs.sync_folders(owed).await?;
        let hashes: Vec<AssetHash> = writes.iter().map(Write::hash).collect();
        let mut written = if writes.is_empty() {
            Vec::new().into_iter()
        } else {
            self.writer.write_all(writes).await?.into_iter()
        };
        let mut hashes = hashes.into_iter();
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    let hash = hashes.next().expect("a hash per write");
                    pushed(hash, written.next().expect("an answer per write"))
                })
            })
            .collect())
    }

    async fn apply_meta(&self, update: MetaUpdate) -> Result<bool, CanError> {
        self.check_meta(update.text_bytes(), update.meta_updated_at_ms)?;
        Ok(self.writer.write(Write::Meta(update)).await?.outcome)
    }

    /// In one step of the writer: read, stamp, replace (the writer's `Write::Edit`).
    async fn edit_meta(&self, edit: MetaEdit) -> Result<pb::AssetMeta, CanError> {
        let hash = edit.hash;
        let write = Write::Edit {
            edit,
            clock: self.limits.clock,
        };
        self.writer.write(write).await?;
        let (_, meta) = self.meta(hash).await?.ok_or(CanError::NotFound(hash))?;
        Ok(meta)
    }

    async fn meta(&self, hash: AssetHash) -> Result<Option<(u64, pb::AssetMeta)>, CanError> {
        let db = self.db.clone();
        let record = blocking(move || schema::read_record(&db, &hash)).await?;
        Ok(record.map(|r| (r.size, r.meta)))
    }

    async fn stats(&self) -> Result<StoreStats, CanError> {
        let db = self.db.clone();
        blocking(move || schema::read_stats(&db)).await
    }

    async fn coded_cells(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Option<Vec<crate::recon::riblt::Cell>>, CanError> {
        Ok(self.coded.cells(start..start.saturating_add(count)))
    }

    async fn coded_probe(&self) -> Result<Option<crate::recon::riblt::estimate::Probe>, CanError> {
        Ok(self.coded.probe())
    }

    async fn subscribe(&self, after_seq: Option<u64>) -> Result<EventStream, CanError> {
        // Subscribe before reading the log, so nothing committed in between is
        // lost; duplicates are dropped by sequence number.
        let live = self.events.subscribe();
        subscription::follow(self.db.clone(), live, after_seq).await
    }

    async fn read_blob(&self, hash: AssetHash, offset: u64) -> Result<(u64, ByteStream), CanError> {
        let db = self.db.clone();
        let segments = self.segments.clone();
        let Some((record, data)) = blocking(move || {
            let Some((record, place)) = schema::read_record_and_inline(&db, &hash)? else {
                return Ok(None);
            };
            let data = match place {
                Place::Row(data) => Some(data),
                Place::Packed(location) => Some(read_packed(&segments, location)?),
                Place::File => None,
            };
            Ok(Some((record, data)))
        })
        .await?
        else {
            return Err(CanError::NotFound(hash));
        };
        let offset = offset.min(record.size);
        let body = match data {
            Some(data) => {
                let start = (offset as usize).min(data.len());
                let rest: Result<Bytes, CanError> = Ok(data.slice(start..));
                stream::iter([rest]).boxed()
            }
            None => self.blobs.read_from(&hash, offset, record.size).await?,
        };
        Ok((record.size, body))
    }

    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        self.write_stream(hash, meta, None, body).await
    }

    async fn write_blob_of_size(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        size: u64,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        self.write_stream(hash, meta, Some(size), body).await
    }

    async fn outboard(&self, hash: AssetHash) -> Result<Option<Outboard>, CanError> {
        // In memory, reading an asset through costs no disk.
        let Some(partials) = self.partials.clone() else {
            return crate::can::outboard_by_reading(self, hash).await;
        };
        let Some((size, _)) = self.meta(hash).await? else {
            return Ok(None);
        };
        if ranges::group_count(size) == 1 {
            // One group is checked against the hash itself.
            return Ok(Some(Outboard::new(hash, size, Vec::new())?));
        }
        let kept = {
            let partials = partials.clone();
            blocking(move || Ok(partials.kept_outboard(&hash, size))).await?
        };
        if kept.is_none() {
            // A blob stored before outboards were kept: reading it through
            // now would hold up the send (a peer waiting on silence gives
            // up), so it goes whole this time and by ranges the next.
            partials.compute_later(hash);
        }
        Ok(kept)
    }

    fn keeps_partials(&self) -> bool {
        self.partials.is_some()
    }

    fn uploads_in_order(&self) -> bool {
        self.blobs.are_objects()
    }

    async fn keeps_outboards(&self) -> bool {
        // Kept beside the blobs on disk; read from memory in memory.
        true
    }

    async fn resume_points(
        &self,
        hashes: &[AssetHash],
    ) -> Result<Vec<(AssetHash, Vec<std::ops::Range<u64>>)>, CanError> {
        let Some(partials) = self.partials.clone() else {
            return Ok(Vec::new());
        };
        let hashes = hashes.to_vec();
        blocking(move || {
            Ok(hashes
                .into_iter()
                .filter_map(|hash| Some((hash, partials.missing(&hash)?)))
                .collect())
        })
        .await
    }

    async fn write_ranges(
        &self,
        meta: pb::AssetMeta,
        outboard: Outboard,
        groups: GroupStream,
    ) -> Result<RangesWritten, CanError> {
        let Some(partials) = self.partials.clone() else {
            return write_ranges_whole(self, meta, outboard, groups).await;
        };
        let (hash, size) = (outboard.hash(), outboard.size());
        self.check_size(size)?;
        self.check_meta(meta_text_bytes(&meta), meta.meta_updated_at_ms)?;
        if self.meta(hash).await?.is_some() {
            // Held already: only its metadata is news.
            let discarded = partials.clone();
            blocking(move || {
                discarded.discard(&hash);
                Ok(())
            })
            .await?;
            return self
                .commit_asset(hash, size, meta)
                .await
                .map(RangesWritten::Whole);
        }
        // In object storage, a fresh transfer whose groups come in order
        // is uploaded as it arrives, beside the local partial asset that
        // lets it resume: used only if this delivery brought every group in
        // order, given up (aborted) at the first group out of order.
        let mut streaming = {
            let partials = partials.clone();
            let fresh = blocking(move || Ok(partials.missing(&hash).is_none())).await?;
            fresh.then(|| self.blobs.upload_of(&hash, size)).flatten()
        };
        let mut streamed = 0u64;
        // Deliveries of one asset from several sources meet in one
        // assembly, whose thread verifies and writes every group while the
        // next ones arrive. Dropped unfinished (this future cancelled, the
        // groups cut), the partial asset keeps what it holds.
        let begun = partials.clone();
        let mut feeder = self
            .assemblies
            .join(
                hash,
                (Bytes::from(outboard.encoded_cvs()), size),
                move || begun.begin(outboard),
            )
            .await?;
        let mut groups = groups;
        let mut cut = None;
        while let Some(group) = groups.next().await {
            match group {
                Ok((index, data)) => {
                    if let Some(upload) = streaming.as_mut() {
                        let in_order = index == streamed;
                        if in_order && upload.push(data.clone()).await.is_ok() {
                            streamed += 1;
                        } else {
                            // Dropped: aborted. The whole file goes up at
                            // the end instead.
                            streaming = None;
                        }
                    }
                    if !feeder.feed(index, data).await {
                        break;
                    }
                }
                Err(err) => {
                    cut = Some(err);
                    break;
                }
            }
        }
        let streamed_whole = streaming.filter(|_| streamed == ranges::group_count(size));
        let ended = feeder
            .finish(async |completing| {
                let owed = self
                    .blobs
                    .store_completed(&hash, completing.path().to_path_buf(), streamed_whole)
                    .await?;
                self.blobs.sync_folders(owed).await?;
                let pushed = self.commit_asset(hash, size, meta).await?;
                let outboard = completing.outboard().clone();
                completing.committed();
                self.keep_outboard(outboard).await;
                Ok(pushed)
            })
            .await?;
        match (ended, cut) {
            (FeederEnd::Whole(pushed), _) => Ok(RangesWritten::Whole(pushed)),
            (FeederEnd::Partial { .. }, Some(err)) => Err(err),
            (FeederEnd::Partial { held, groups }, None) => {
                Ok(RangesWritten::Partial { held, groups })
            }
        }
    }

    fn object_stats(&self) -> Option<ObjectStats> {
        // The inherent method (path resolution prefers it to this one).
        Self::object_stats(self)
    }

    async fn partial_stats(&self) -> Result<PartialStats, CanError> {
        Ok(self
            .partials
            .as_ref()
            .map(|partials| partials.stats())
            .unwrap_or_default())
    }

    async fn partial_assets(&self, limit: usize) -> Result<Vec<PartialAsset>, CanError> {
        Ok(self
            .partials
            .as_ref()
            .map(|partials| partials.list(limit))
            .unwrap_or_default())
    }
}
