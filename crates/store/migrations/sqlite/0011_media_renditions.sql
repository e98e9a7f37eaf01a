-- The renditions a media job made (a JSON array of {name, format, width, height, bytes, url}), written when
-- the job finishes, so product pages can offer them (srcset) long after the job itself is pruned.
ALTER TABLE media ADD COLUMN renditions TEXT;
