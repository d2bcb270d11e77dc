-- pandoc filter for the man pages made from docs/: the docs' tables are
-- too wide for a terminal (tbl wraps the last column a word per line), so
-- each row becomes a definition list item, its first cell the term and the
-- other cells paragraphs headed by their column's name.
function Table(t)
  local heads = {}
  for _, row in ipairs(t.head.rows) do
    for i, cell in ipairs(row.cells) do
      heads[i] = pandoc.utils.stringify(cell.contents)
    end
  end
  local items = {}
  for _, body in ipairs(t.bodies) do
    for _, row in ipairs(body.body) do
      local term = pandoc.utils.blocks_to_inlines(row.cells[1].contents)
      local paras = {}
      for i = 2, #row.cells do
        local text = pandoc.utils.blocks_to_inlines(row.cells[i].contents)
        if #text > 0 then
          local inl = pandoc.List({ pandoc.Emph({ pandoc.Str((heads[i] or "") .. ":") }), pandoc.Space() })
          inl:extend(text)
          table.insert(paras, pandoc.Para(inl))
        end
      end
      table.insert(items, { term, { paras } })
    end
  end
  return pandoc.DefinitionList(items)
end
