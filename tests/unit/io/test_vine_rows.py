"""ReadVineRows: the rows query's text and the BigQuery read it configures (nothing reaches Google)."""

import re

import apache_beam as beam
import pytest

from transforms.io.row_lookup import LOOKUP_QUERY_SUFFIX
from transforms.io.vine_rows import ReadVineRows, seed_query, temp_dataset_reference

# The seed's columns, in its order (video-migration-architecture.md, "Data Schema").
SEED_COLUMNS = ["vineId", "username", "description", "loops", "likes", "comment_count",
                "repost_count", "created_timestamp", "hashtags"]


def _select_list(sql):
  """The outer SELECT's items: the text between the first SELECT and the outer FROM."""
  body = sql[len("SELECT"):sql.index("\nFROM `")]
  items, depth, current = [], 0, ""
  for char in body:
    depth += char == "("
    depth -= char == ")"
    if char == "," and depth == 0:
      items.append(current.strip())
      current = ""
    else:
      current += char
  return items + [current.strip()]


def test_query_keeps_the_seeds_columns_join_and_hashtags_without_outer_distinct():
  sql = seed_query("openvine-co", "vine_export")
  assert re.match(r"SELECT\s+p\.vineId", sql)  # no DISTINCT over a row holding an ARRAY
  items = _select_list(sql)
  aliases = [re.split(r"\s+as\s+|\.", item, flags=re.I)[-1].strip() for item in items]
  assert aliases == SEED_COLUMNS
  assert "CAST(p.loops AS INT64) as loops" in items and "p.like_count as likes" in items
  assert "UNIX_SECONDS(vp.created_at) as created_timestamp" in items
  (hashtags,) = [item for item in items if item.endswith("as hashtags")]
  # DISTINCT only over the scalar tags inside the ARRAY, as in the seed.
  assert re.search(r"ARRAY\(\s*SELECT DISTINCT LOWER\(REGEXP_EXTRACT\(tag, r'#\(\\w\+\)'\)\)", hashtags)
  assert "UNNEST(REGEXP_EXTRACT_ALL(p.description, r'#\\w+')) as tag" in hashtags
  assert sql.count("DISTINCT") == 1
  assert "FROM `openvine-co.vine_export.posts_with_archived_videos` p\n" in sql
  assert sql.endswith("LEFT JOIN `openvine-co.vine_export.vine_posts` vp ON p.vineId = vp.id")


def test_the_lookups_where_still_filters_the_outer_query():
  sql = seed_query("proj", "ds") + LOOKUP_QUERY_SUFFIX
  assert sql.endswith("ON p.vineId = vp.id\nWHERE p.vineId IN UNNEST(@ids)")


@pytest.mark.parametrize("project,dataset", [("p", "d` UNION ALL SELECT 1 --"), ("", "d"),
                                             ("p.q", "d")])
def test_names_that_are_not_identifiers_never_reach_the_sql(project, dataset):
  with pytest.raises(ValueError):
    seed_query(project, dataset)


@pytest.mark.parametrize("spec", ["my-proj:scratch", "my-proj.scratch"])
def test_temp_dataset_reference(spec):
  ref = temp_dataset_reference(spec)
  assert (ref.projectId, ref.datasetId) == ("my-proj", "scratch")


@pytest.mark.parametrize("spec", ["scratch", "p:", "p:a.b", "p:d;drop", "p:beam_temp_dataset_x"])
def test_temp_dataset_refused(spec):
  with pytest.raises(ValueError, match="--bigquery-temp-dataset"):
    temp_dataset_reference(spec)


def _bigquery_reads(temp_dataset):
  p = beam.Pipeline()
  _ = p | "ReadVineRows" >> ReadVineRows("run", project="proj", dataset="ds",
                                         temp_dataset=temp_dataset)
  found = []

  class Visitor(beam.pipeline.PipelineVisitor):
    def enter_composite_transform(self, node):
      if isinstance(node.transform, beam.io.ReadFromBigQuery):
        found.append(node)

  p.visit(Visitor())
  return found


def test_read_writes_its_result_into_the_given_dataset():
  (node,) = _bigquery_reads("my-proj:scratch")
  read = node.transform
  assert node.full_label == "ReadVineRows/QueryBigQuery"
  kwargs = read._kwargs  # pylint: disable=protected-access
  assert kwargs["query"] == seed_query("proj", "ds") and kwargs["use_standard_sql"] is True
  assert read.method == beam.io.ReadFromBigQuery.Method.DIRECT_READ
  ref = kwargs["temp_dataset"]
  assert (ref.projectId, ref.datasetId) == ("my-proj", "scratch")


def test_read_without_a_temp_dataset_leaves_beam_to_create_one():
  (node,) = _bigquery_reads(None)
  assert "temp_dataset" not in node.transform._kwargs  # pylint: disable=protected-access
